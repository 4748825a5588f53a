"""Stand-ins for the builder's nets (same interface: `task`, `state_size`, `initial_state`, batch-first state),
real-ish samples, and a throwaway BentoML home so tests never touch ~/bentoml."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from models.artifact.card import FeatureInput, ImageInput, ModelCard, SeriesInput, StandardScaling, TokenInput

TEXT = ("the time traveller for so it will be convenient to speak of him was expounding a recondite matter to us "
        "his grey eyes shone and twinkled and his usually pale face was flushed and animated the fire burned "
        "brightly and the soft radiance of the incandescent lights in the lilies of silver caught the bubbles ")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> None:
    """Tiny models on a shared 2-core box: OpenMP threads only fight each other (8× slower training here)."""
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def bentoml_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "bentoml"
    monkeypatch.setenv("BENTOML_HOME", str(home))
    return home


# --- stand-in nets ----------------------------------------------------------------------------------------

def tiny_cnn(classes: int = 10) -> nn.Module:
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),  # (B,8,8,8)
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),  # (B,16,8,8)
        nn.MaxPool2d(2), nn.Flatten(),  # (B,256)
        nn.Linear(16 * 4 * 4, classes),  # (B,K)
    )
    net.task = "classification"
    return net


def bilinear_kernel(channels: int, size: int) -> torch.Tensor:
    """ConvTranspose2d weight that upsamples each channel bilinearly (FCN initialisation)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    ramp = 1 - (torch.arange(size, dtype=torch.float32) - center).abs() / factor  # (size,)
    weight = torch.zeros(channels, channels, size, size)
    weight[range(channels), range(channels)] = ramp[:, None] * ramp[None, :]
    return weight


def tiny_fcn(classes: int = 3) -> nn.Module:
    up = nn.ConvTranspose2d(classes, classes, kernel_size=64, stride=32, padding=16, bias=False)
    up.weight.data.copy_(bilinear_kernel(classes, 64))
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),  # (B,8,64,64)
        nn.MaxPool2d(32),  # (B,8,2,2)
        nn.Conv2d(8, classes, 1),  # (B,K,2,2)
        up,  # (B,K,64,64)
    )
    net.task = "segmentation"
    return net


class CharNet(nn.Module):
    """Char model: one-hot (RNN) or embedding (GRU/LSTM) → recurrent (batch_first) → Linear head."""

    task = "sequence"

    def __init__(self, cell: str, vocab: int, hidden: int = 16, layers: int = 2):
        super().__init__()
        self.cell, self.vocab, self.hidden, self.layers = cell, vocab, hidden, layers
        self.embed = None if cell == "RNN" else nn.Embedding(vocab, 8)
        self.rnn = getattr(nn, cell)(vocab if cell == "RNN" else 8, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)
        self.state_size = 2 if cell == "LSTM" else 1

    def initial_state(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        return tuple(torch.zeros(batch_size, self.layers, self.hidden) for _ in range(self.state_size))

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, ...] | None = None):
        state = state if state is not None else self.initial_state(x.shape[0])
        inp = F.one_hot(x, self.vocab).float() if self.embed is None else self.embed(x)  # (B,T,E)
        layer_first = tuple(s.transpose(0, 1).contiguous() for s in state)  # (L,B,H)
        y, new = self.rnn(inp, layer_first if self.cell == "LSTM" else layer_first[0])  # (B,T,H)
        new = new if isinstance(new, tuple) else (new,)
        return self.head(y), tuple(s.transpose(0, 1) for s in new)  # (B,T,V), each (B,L,H)


def mlp(inputs: int, task: str) -> nn.Module:
    net = nn.Sequential(nn.Linear(inputs, 32), nn.ReLU(), nn.Linear(32, 1))  # (B,F) → (B,1)
    net.task = task
    return net


def fit(net: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, steps: int, lr: float = 1e-2) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,))
        opt.zero_grad()
        loss_fn(net(x[idx]), y[idx]).backward()
        opt.step()
    return net.eval()


# --- data --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits as uint8 pixels (N,8,8,1) and labels (N,)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.clip(d.images * 16, 0, 255).astype(np.uint8)[..., None], d.target.astype(np.int64)


@pytest.fixture(scope="session")
def digits_card(digits) -> ModelCard:
    pixels, _ = digits
    return ModelCard(name="digits", spec_hash="d1g175", task="classification",
                     input=ImageInput(channels=1, size=(8, 8), mean=[float(pixels.mean() / 255)],
                                      std=[float(pixels.std() / 255)]),
                     labels=[str(i) for i in range(10)], metrics={"accuracy": 0.0})


@pytest.fixture(scope="session")
def digits_cnn(digits, digits_card) -> nn.Module:
    """A tiny CNN trained for a few steps on the first 1200 digits."""
    pixels, labels = digits
    torch.manual_seed(0)
    mean, std = digits_card.input.mean[0], digits_card.input.std[0]
    x = (torch.from_numpy(pixels[:1200]).permute(0, 3, 1, 2).float() / 255 - mean) / std  # (N,1,8,8)
    return fit(tiny_cnn(), x, torch.from_numpy(labels[:1200]), F.cross_entropy, steps=80)


@pytest.fixture(scope="session")
def digits_export(tmp_path_factory, digits, digits_cnn, digits_card):
    from models.export.onnx_graph import export_net

    out = tmp_path_factory.mktemp("digits")
    return export_net(digits_cnn, digits_card, out, example_inputs=digits[0][:4])


@pytest.fixture(scope="session")
def text_tokens() -> tuple[list[str], np.ndarray, np.ndarray]:
    """vocab, 256 windows (256,12) of char ids, and their next-char targets (256,12)."""
    vocab = sorted(set(TEXT))
    ids = np.array([vocab.index(c) for c in TEXT], dtype=np.int64)
    starts = np.arange(256) % (len(ids) - 13)
    windows = np.stack([ids[s:s + 13] for s in starts])  # (256,13)
    return vocab, windows[:, :12], windows[:, 1:]


def token_card(vocab: list[str], name: str = "chars") -> ModelCard:
    return ModelCard(name=name, spec_hash="c4a75", task="sequence", input=TokenInput(vocab=vocab))


@pytest.fixture(scope="session")
def series() -> tuple[np.ndarray, np.ndarray]:
    """300 windows (300,16) of a noisy sine and the next value (300,1)."""
    rng = np.random.default_rng(0)
    t = np.arange(400, dtype=np.float32)
    wave = (np.sin(2 * math.pi * t / 37) + 0.05 * rng.standard_normal(400)).astype(np.float32)
    windows = np.stack([wave[i:i + 16] for i in range(300)])  # (300,16)
    return windows, wave[16:316, None].copy()  # targets (300,1)


def series_card() -> ModelCard:
    return ModelCard(name="sine", spec_hash="5e71e5", task="sequence",
                     input=SeriesInput(window=16, scaling=StandardScaling(mean=0.0, std=1.0)))


def features_card(count: int) -> ModelCard:
    return ModelCard(name="regress", spec_hash="f3a7", task="regression", input=FeatureInput(count=count))


@pytest.fixture(scope="session")
def forecaster(series) -> nn.Module:
    windows, targets = series
    return fit(mlp(16, "sequence"), torch.from_numpy(windows), torch.from_numpy(targets), F.mse_loss, steps=150)


@pytest.fixture(scope="session")
def standins() -> SimpleNamespace:
    """The factories above, for test modules (fixtures work under every pytest import mode)."""
    return SimpleNamespace(tiny_cnn=tiny_cnn, tiny_fcn=tiny_fcn, CharNet=CharNet, mlp=mlp, fit=fit,
                           token_card=token_card, series_card=series_card, features_card=features_card)
