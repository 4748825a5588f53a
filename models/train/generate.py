"""Text generation from a run's checkpoint in PyTorch: the prefix once, then one token per step with the state
carried (linear in the length), sampled by models.artifact.sampling."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.build import build
from models.train.checkpoint import load_checkpoint
from models.data import Vocab
from models.train.runs import Run, RunError
from models.artifact.sampling import sample_next

MAX_LENGTH = 10_000


@torch.no_grad()
def generate_from_run(run_dir: Path, prefix: str, length: int, temperature: float = 0.0, top_k: int = 0,
                      seed: int = 0) -> str:
    run = Run(run_dir)
    spec = run.load_spec()
    if spec.input.kind != "tokens":
        raise RunError(f"{run.path}: {spec.name} is not a character model (input is {spec.input.kind})")
    if not 0 < length <= MAX_LENGTH or temperature < 0 or top_k < 0:
        raise ValueError(f"length must be 1..{MAX_LENGTH}, temperature ≥ 0 and top-k ≥ 0")
    vocab = Vocab.from_dict(run.read_json("task.json")["vocab"])
    net = build(spec)
    net.load_state_dict(load_checkpoint(run.checkpoints, "best", with_state=False).weights)
    net.eval()
    ids = vocab.encode(prefix)
    if not ids:
        raise ValueError(f"prefix {prefix!r} has no characters the model knows")
    allowed = np.array([len(t) == 1 for t in vocab.tokens])  # never write <unk>
    rng = np.random.default_rng(seed)
    logits, state = net(torch.tensor([ids]), None)  # (1, T, V): the prefix in one call
    out: list[int] = []
    for _ in range(length):
        token = sample_next(logits[0, -1].numpy(), allowed, temperature, top_k, rng)
        out.append(token)
        logits, state = net(torch.tensor([[token]]), state)
    return vocab.decode(ids) + vocab.decode(out)
