"""Image folders that outgrow memory: specserve's file datasets (models.data.files) against a plain
ImageFolder + DataLoader baseline, on generated folders of JPEGs.

    .venv/bin/python benchmarks/data_pipeline.py                       # 10,000 and 50,000 JPEGs, writes BENCHMARKS.md
    .venv/bin/python benchmarks/data_pipeline.py --sizes 500 --rounds 1 --batch 32 --train-steps 12 --no-write  # smoke

The folders (10 classes, JPEG quality 90, sizes drawn around 256x256: 224..288 per side, smooth colour fields with
shapes and noise, ~14 KB each) are generated once under --root (default runs/bench-data, git-ignored) as
<root>/jpeg-<N>/train/<class>/*.jpg, plus N/20 test images; the spec resizes them to 128x128.

Each measurement runs in its own process; this process samples it and all its children (the DataLoader workers)
with psutil every 50 ms: peak RSS is the largest sum of the processes' RSS (shared pages count once per process,
as `ps` would add them up), peak PSS the largest sum of proportional set sizes (shared pages split). Per size:

  pipeline   batches of the training split alone, one epoch (or --pipeline-samples), nothing computed on them:
               baseline   ImageFolder + DataLoader(batch, shuffle, workers) with the resize in the dataset
               files      specserve, cache: none (every epoch decodes the JPEGs in workers)
               files-fast the same with fast_decode: true (libjpeg DCT scaling, then the resize)
               cache      specserve, cache: disk, warm (built by the `build` run before; reads no JPEG)
             first batch = seconds from the start of listing the folder to the first batch in hand.
  build      cache: disk on a cold cache: listing + decoding every image once into the cache.
  train      the trainer on a small CNN (2 convs, global pooling, linear; SGD), 1 epoch capped at --train-steps
             steps, for cache none / disk (warm) and the baseline loader driving the same network by hand;
             time to first step = seconds from train() (or the baseline's loader) to the first batch entering
             the network; steady samples/s over the steps after the first 5.

Rounds interleave the candidates (ABBA per round); figures are medians over rounds, ratios medians of per-round
ratios. torchvision: its only wheel here (0.28.0, matching torch 2.13.0) is a CUDA build whose _C.so links
libtorch_cuda.so and fails to load against the CPU torch, so the baseline is torchvision's ImageFolder + Resize +
PILToTensor written out in plain PIL (same listing into a list of (path, label), same pil_loader, same bilinear
resize), driven by torch's DataLoader exactly as torchvision users do.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import (ROOT, command_line, cpu_model, fmt, load_note, md_table, median, now,  # noqa: E402
                               publish)

SECTION = "data_pipeline"
CLASSES = 10
SIZE = (128, 128)
PIPELINE_KINDS = ("baseline", "files", "files-fast", "cache")
TRAIN_KINDS = ("baseline", "files", "cache")
SPEC = """
name: bench-data-cnn
task: classification
input: {channels: 3, size: [128, 128], mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}
network:
  - conv2d: {out: 16, kernel: 3, stride: 2, padding: 1}
  - relu
  - conv2d: {out: 32, kernel: 3, stride: 2, padding: 1}
  - relu
  - global_avgpool
  - linear: {out: 10}
data: {dataset: image_folder, root: ROOT, size: [128, 128], cache: CACHE, workers: WORKERS, batch_size: BATCH}
train: {epochs: 1, optimizer: {sgd: {lr: 0.05, momentum: 0.9}}, seed: 0}
"""


# ----------------------------------------------------------------------------------------------- the image folders
def _write_images(job: tuple[str, int, int, int]) -> None:
    """Images start..stop-1 of one folder (run in a pool)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    folder, start, stop, seed = job
    for i in range(start, stop):
        rng = np.random.default_rng(seed * 1_000_003 + i)
        cls = i % CLASSES
        h, w = (int(v) for v in rng.integers(224, 289, 2))
        base = np.array([(cls * 25) % 256, (cls * 70 + 40) % 256, (255 - cls * 20) % 256], dtype=np.float32)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        field = (base + 60 * np.sin(xx[..., None] / rng.uniform(15, 40) + rng.uniform(0, 6, 3))
                 + 40 * np.cos(yy[..., None] / rng.uniform(15, 40)))
        img = Image.fromarray(np.clip(field + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(2, 6))):
            x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
            box = (x0, y0, x0 + int(rng.integers(20, 120)), y0 + int(rng.integers(20, 120)))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if cls % 2 else draw.rectangle)(box, fill=colour)
        img = img.filter(ImageFilter.GaussianBlur(0.6))
        target = Path(folder) / f"c{cls}" / f"{i:06d}.jpg"
        img.save(target, quality=90)


def make_folder(root: Path, n: int, processes: int) -> Path:
    """<root>/jpeg-<n>/{train,test}/c<k>/*.jpg, generated once (a marker file says it is complete)."""
    from multiprocessing import Pool

    data = root / f"jpeg-{n}"
    marker = data / ".complete"
    if marker.exists():
        return data
    shutil.rmtree(data, ignore_errors=True)
    jobs = []
    for split, count, seed in (("train", n, 1), ("test", max(n // 20, CLASSES), 2)):
        for c in range(CLASSES):
            (data / split / f"c{c}").mkdir(parents=True, exist_ok=True)
        step = 250
        jobs += [(str(data / split), s, min(s + step, count), seed) for s in range(0, count, step)]
    began = time.perf_counter()
    with Pool(processes) as pool:
        for done, _ in enumerate(pool.imap_unordered(_write_images, jobs), 1):
            if done % 20 == 0 or done == len(jobs):
                print(f"  generating {data}: {done}/{len(jobs)} chunks, {time.perf_counter() - began:.0f} s",
                      file=sys.stderr, flush=True)
    marker.write_text(json.dumps({"images": n, "seconds": round(time.perf_counter() - began, 1)}))
    return data


def folder_bytes(data: Path) -> int:
    return sum(f.stat().st_size for f in (data / "train").rglob("*.jpg"))


# ----------------------------------------------------------------------------------------------- the baseline
class PILImageFolder:
    """torchvision.datasets.ImageFolder(root, transform=Compose([Resize(SIZE), PILToTensor()])), in plain PIL."""

    EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

    def __init__(self, root: str):
        classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
        self.samples = [(os.path.join(root, c, f), i) for i, c in enumerate(classes)
                        for f in sorted(os.listdir(os.path.join(root, c))) if f.lower().endswith(self.EXTENSIONS)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        import numpy as np
        import torch
        from PIL import Image

        path, label = self.samples[i]
        with open(path, "rb") as f:  # torchvision's pil_loader
            img = Image.open(f).convert("RGB")
        img = img.resize((SIZE[1], SIZE[0]), Image.Resampling.BILINEAR)  # Resize on a PIL image: PIL's bilinear
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1), label  # PILToTensor


def baseline_loader(data: Path, batch: int, workers: int, seed: int):
    import torch
    from torch.utils.data import DataLoader

    return DataLoader(PILImageFolder(str(data / "train")), batch_size=batch, shuffle=True, num_workers=workers,
                      generator=torch.Generator().manual_seed(seed), persistent_workers=workers > 0)


# ----------------------------------------------------------------------------------------------- child processes
def _specserve_options(job: dict[str, Any], data: Path) -> dict[str, Any]:
    cache = {"files": "none", "files-fast": "none", "cache": "disk", "build": "disk"}[job["kind"]]
    return {"root": str(data), "size": list(SIZE), "cache": cache, "workers": job["workers"],
            "fast_decode": job["kind"] == "files-fast"}


def child_pipeline(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    data = Path(job["data"])
    began = time.perf_counter()
    if job["kind"] == "baseline":
        loader = baseline_loader(data, job["batch"], job["workers"], job["seed"])
        batches = iter(loader)
        n_total = len(loader.dataset)
    else:
        from models.data import load_dataset

        splits = load_dataset("image_folder", _specserve_options(job, data), seed=0)
        batches = splits.train.batches(job["batch"], shuffle=True, generator=torch.Generator().manual_seed(job["seed"]))
        n_total = len(splits.train)
    limit = min(job["samples"] or n_total, n_total)
    seen, first = 0, None
    for x, y in batches:
        assert x.dtype == torch.uint8 and tuple(x.shape[1:]) == (3, *SIZE)
        seen += len(x)
        if first is None:
            first = time.perf_counter()
            first_seen = seen
        if seen >= limit:
            break
    end = time.perf_counter()
    steady = (seen - first_seen) / (end - first) if end > first else float("nan")
    return {"first_batch_s": first - began, "samples": seen, "samples_per_s": steady,
            "overall_samples_per_s": seen / (end - began)}


def child_build(job: dict[str, Any]) -> dict[str, Any]:
    from models.data import load_dataset

    data = Path(job["data"])
    shutil.rmtree(data / ".specserve-cache", ignore_errors=True)
    began = time.perf_counter()
    splits = load_dataset("image_folder", _specserve_options(job, data), seed=0)
    seconds = time.perf_counter() - began
    n = len(splits.train) + len(splits.test)
    assert splits.how.startswith("disk cache"), splits.how
    return {"seconds": seconds, "samples": n, "samples_per_s": n / seconds,
            "cache_bytes": sum(f.stat().st_size for f in (data / ".specserve-cache").rglob("*") if f.is_file())}


def _steady(stamps: list[float], batch: int, skip: int = 5) -> float:
    if len(stamps) <= skip + 1:
        return float("nan")
    return (len(stamps) - 1 - skip) * batch / (stamps[-1] - stamps[skip])


def child_train(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from benchmarks.common import set_threads
    from models.spec.load import load_spec_text

    set_threads(job["threads"])
    data = Path(job["data"])
    kind = job["kind"]
    text = (SPEC.replace("ROOT", data.name).replace("CACHE", {"files": "none", "cache": "disk", "baseline": "none"}[kind])
            .replace("WORKERS", str(job["workers"])).replace("BATCH", str(job["batch"])))
    spec = load_spec_text(text, "bench.yaml")
    stamps: list[float] = []
    data_s = 0.0  # of the time to the first step: opening the data, and from asking for batches to the first one
    if kind == "baseline":
        from models.build import build
        from models.data import normalize, to_float

        began = time.perf_counter()
        net = build(spec, seed=0)
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        mean = torch.tensor(spec.input.mean)
        std = torch.tensor(spec.input.std)
        asked = time.perf_counter()
        loader = baseline_loader(data, job["batch"], job["workers"], job["seed"])
        for step, (x, y) in enumerate(loader):
            if step == 0:
                data_s = time.perf_counter() - asked
            if step >= job["steps"]:
                break
            stamps.append(time.perf_counter())
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(normalize(to_float(x), mean, std)), y)
            loss.backward()
            opt.step()
        stamps.append(time.perf_counter())
        epoch_samples_per_s = float("nan")
    else:
        import models.train.loop as loop
        import models.train.tasks as tasks
        from models.train.loop import TrainOptions, train

        original_step, original_batches, original_open = tasks.Classification.step, tasks.Task.train_batches, loop.open_dataset
        asked: list[float] = []
        opened: list[float] = []

        def stamped(self, *args, **kwargs):
            stamps.append(time.perf_counter())
            return original_step(self, *args, **kwargs)

        def batches(self, *args, **kwargs):
            asked.append(time.perf_counter())
            return original_batches(self, *args, **kwargs)

        def open_dataset(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original_open(*args, **kwargs)
            finally:
                opened.append(time.perf_counter() - start)

        tasks.Classification.step, tasks.Task.train_batches, loop.open_dataset = stamped, batches, open_dataset
        with tempfile.TemporaryDirectory(prefix="bench-data-run-") as tmp:
            began = time.perf_counter()
            result = train(spec, TrainOptions(out=Path(tmp) / "run", device="cpu", quiet=True,
                                              max_steps=job["steps"], data_root=data.parent))
        epoch_samples_per_s = result.history[-1]["samples_per_s"]
        data_s = opened[0] + stamps[0] - asked[0]
    return {"first_step_s": stamps[0] - began, "data_first_step_s": data_s, "steps": len(stamps),
            "samples_per_s": _steady(stamps, job["batch"]), "epoch_samples_per_s": epoch_samples_per_s}


CHILDREN = {"pipeline": child_pipeline, "build": child_build, "train": child_train}


# ----------------------------------------------------------------------------------------------- measuring a child
def measure(job: dict[str, Any]) -> dict[str, Any]:
    """Run `job` in a child process; its result plus the peak RSS/PSS of it and its children, in MiB."""
    import psutil

    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)]
    env = {**os.environ, "OMP_NUM_THREADS": str(job.get("threads", 1))}
    proc = psutil.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak_rss = peak_pss = 0
    last_pss = 0.0
    while proc.poll() is None:
        try:
            tree = [proc, *proc.children(recursive=True)]
            rss = 0
            for p in tree:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
            peak_rss = max(peak_rss, rss)
            if time.monotonic() - last_pss > 0.25:  # smaps is slower to read: 4 times a second
                last_pss = time.monotonic()
                pss = 0
                for p in tree:
                    try:
                        pss += p.memory_full_info().pss
                    except psutil.Error:
                        pass
                peak_pss = max(peak_pss, pss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{job['mode']} {job['kind']} failed ({proc.returncode}):\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "peak_rss_mib": peak_rss / 2**20, "peak_pss_mib": peak_pss / 2**20}


# ----------------------------------------------------------------------------------------------- the report
def _m(runs: list[dict[str, Any]], key: str) -> float:
    return median([r[key] for r in runs])


def _ratio(a: list[dict[str, Any]], b: list[dict[str, Any]], key: str) -> float:
    return median([x[key] / y[key] for x, y in zip(a, b)])


def report(results: dict[int, dict[str, Any]], args: argparse.Namespace, info: dict[int, dict[str, Any]]) -> str:
    rows, train_rows, build_rows = [], [], []
    for n, res in results.items():
        base = res["pipeline"]["baseline"]
        for kind in PIPELINE_KINDS if base else ():
            runs = res["pipeline"][kind]
            rows.append([f"{n:,}", kind, fmt(_m(runs, "first_batch_s")), fmt(_m(runs, "samples_per_s")),
                         "–" if kind == "baseline" else f"**{_ratio(runs, base, 'samples_per_s'):.2f}**",
                         fmt(_m(runs, "peak_rss_mib"), 0), fmt(_m(runs, "peak_pss_mib"), 0)])
        tbase = res["train"]["baseline"]
        for kind in TRAIN_KINDS if tbase else ():
            runs = res["train"][kind]
            train_rows.append([f"{n:,}", kind, fmt(_m(runs, "first_step_s")), fmt(_m(runs, "data_first_step_s")),
                               fmt(_m(runs, "samples_per_s")),
                               "–" if kind == "baseline" else f"{_ratio(runs, tbase, 'samples_per_s'):.2f}",
                               fmt(_m(runs, "peak_rss_mib"), 0), fmt(_m(runs, "peak_pss_mib"), 0)])
        b = res["build"]
        build_rows.append([f"{n:,}", f"{info[n]['jpeg_bytes'] / 2**20:,.0f}", fmt(b["seconds"], 1),
                           fmt(b["samples_per_s"]), f"{b['cache_bytes'] / 2**20:,.0f}", fmt(b["peak_rss_mib"], 0)])
    goals = []
    sizes = sorted(results)
    if len(sizes) >= 2:
        small, large = results[sizes[0]], results[sizes[-1]]
        for kind in ("files", "cache", "baseline"):
            parts = [f"{mode} {_m(large[mode][kind], 'peak_rss_mib') / _m(small[mode][kind], 'peak_rss_mib'):.2f}×"
                     for mode in ("train", "pipeline") if small[mode].get(kind)]
            goal = " (goal ≤ 1.25)" if kind != "baseline" else ""
            goals.append(f"- peak RSS, {sizes[-1]:,} vs {sizes[0]:,} images, {kind}: {', '.join(parts)}{goal}")
    for n, res in results.items():
        base = res["pipeline"]["baseline"]
        if not base or not res["train"]["cache"]:
            continue
        goals.append(f"- {n:,} images: pipeline files / baseline {_ratio(res['pipeline']['files'], base, 'samples_per_s'):.2f}× "
                     f"(goal ≥ 1.0); warm cache / baseline {_ratio(res['pipeline']['cache'], base, 'samples_per_s'):.2f}× "
                     f"(goal ≥ 3); time to first step, warm cache {_m(res['train']['cache'], 'first_step_s'):.2f} s, "
                     f"of which data {_m(res['train']['cache'], 'data_first_step_s'):.2f} s (goal ≤ 5 s)")
    return "\n".join([
        "## Data pipeline: image folders that outgrow memory", "",
        f"`{command_line('data_pipeline.py')}` — {now()}, {load_note()}. {cpu_model()}; {args.workers} DataLoader "
        f"worker(s) on every side, batch {args.batch}, JPEGs around 256×256 resized to 128×128, {args.rounds} "
        f"interleaved round(s), medians. Baseline: torchvision's ImageFolder + Resize + PILToTensor written out in "
        f"plain PIL (torchvision 0.28.0, the release for torch 2.13.0, is only available here as a CUDA build that "
        f"does not load against the CPU torch) in a torch DataLoader with the same workers, batch and shuffling. "
        f"Peak RSS/PSS: the training process and its workers summed (psutil, every 50 ms); RSS counts pages "
        f"shared by forked workers once per process, PSS splits them.", "",
        "Input pipeline alone (one epoch of training batches, nothing computed on them; first batch = from listing "
        "the folder to the first batch in hand):", "",
        md_table(["images", "path", "first batch s", "samples/s", "× baseline", "peak RSS MiB", "peak PSS MiB"],
                 rows, align="llrrrrr"), "",
        f"Training (small CNN, SGD, 1 epoch of at most {args.train_steps} steps, {args.threads} torch thread(s); "
        "time to first step = from train() (baseline: from building the same network) to the first batch entering "
        "the net, network building (models.build, shape inference) included; of which data = opening the dataset "
        "(listing, cache check) + from asking for batches (workers starting) to the first one; samples/s over the "
        "steps after the first 5):", "",
        md_table(["images", "path", "time to first step s", "of which data s", "samples/s", "× baseline",
                  "peak RSS MiB", "peak PSS MiB"], train_rows, align="llrrrrrr"), "",
        "Decode cache, cold (every JPEG decoded and resized once, written to <root>/.specserve-cache):", "",
        md_table(["images", "JPEG MiB", "build s", "samples/s", "cache MiB", "peak RSS MiB"], build_rows), "",
        "Goals:", "", *goals,
    ])


# ----------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000], help="images per training folder")
    p.add_argument("--root", type=Path, default=ROOT / "runs" / "bench-data", help="where the folders are generated")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers, every side (default: specserve's)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every candidate")
    p.add_argument("--pipeline-samples", type=int, default=0, help="samples per pipeline run (0: a whole epoch)")
    p.add_argument("--train-steps", type=int, default=100, help="training steps per run")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads for training")
    p.add_argument("--modes", nargs="+", choices=["pipeline", "train"], default=["pipeline", "train"],
                   help="what to measure besides the cold cache build")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        job = json.loads(args.child)
        print(json.dumps(CHILDREN[job["mode"]](job)), flush=True)
        return
    if args.workers is None:
        from models.data.workers import default_workers

        args.workers = default_workers()
    results: dict[int, dict[str, Any]] = {}
    info: dict[int, dict[str, Any]] = {}
    processes = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    for n in args.sizes:
        data = make_folder(args.root, n, processes)
        info[n] = {"jpeg_bytes": folder_bytes(data)}
        common = {"data": str(data), "workers": args.workers, "batch": args.batch, "threads": args.threads}
        print(f"{n:,} images: building the decode cache (cold)", file=sys.stderr, flush=True)
        res: dict[str, Any] = {"build": measure({**common, "mode": "build", "kind": "build"}),
                               "pipeline": {k: [] for k in PIPELINE_KINDS}, "train": {k: [] for k in TRAIN_KINDS}}
        for r in range(args.rounds):
            for mode, kinds in (("pipeline", PIPELINE_KINDS), ("train", TRAIN_KINDS)):
                if mode not in args.modes:
                    continue
                for kind in kinds if r % 2 == 0 else tuple(reversed(kinds)):
                    job = {**common, "mode": mode, "kind": kind, "seed": r, "samples": args.pipeline_samples,
                           "steps": args.train_steps}
                    print(f"{n:,} images, round {r + 1}/{args.rounds}: {mode} {kind}", file=sys.stderr, flush=True)
                    res[mode][kind].append(measure(job))
        results[n] = res
    publish(SECTION, report(results, args, info), write=not args.no_write)


if __name__ == "__main__":
    main()
