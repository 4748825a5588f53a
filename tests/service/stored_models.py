"""Small real models for the service tests, made by the project's own line (`specserve run`):
test specs → models.pipeline.run_line (validate → train a few epochs on the real data → export with its parity
proof → int8 where the spec asks → store). Predictions are meaningful: digits are recognised, shapes found, the
char model writes English-like letter sequences, the forecaster follows a sine, the regression finds w and b, the
text classifier tells the generated reviews' polarity."""
from __future__ import annotations

from pathlib import Path

from models.pipeline import run_line
from models.train.loop import TrainOptions

ROOT = Path(__file__).resolve().parents[2]

SPECS = {
    "test-digits": """
name: test-digits
task: classification
input: {channels: 1, size: [8, 8], mean: [0.3], std: [0.38]}
labels: ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
network:
  - conv2d: {out: 16, kernel: 3, padding: 1}
  - relu
  - maxpool2d: {kernel: 2}
  - flatten
  - linear: {out: 10}
data: {dataset: digits, batch_size: 32}
train: {epochs: 2, optimizer: {adam: {lr: 0.01}}}
""",
    "test-digits-mlp": """
name: test-digits-mlp
task: classification
input: {channels: 1, size: [8, 8], mean: [0.3], std: [0.38]}
labels: ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
network: [flatten, {linear: {out: 10}}]
data: {dataset: digits, batch_size: 32}
train: {epochs: 3, optimizer: {adam: {lr: 0.05}}}
export: {quantize: dynamic, max_accuracy_drop: 0.05, require_int8_speedup: false}  # served from int8 (test), fast or not
""",
    "test-shapes": """
name: test-shapes
task: segmentation
input: {channels: 3, size: [64, 64], mean: [0.5, 0.5, 0.5], std: [0.3, 0.3, 0.3]}
labels: [background, circle, square, triangle]
network:
  - conv2d: {out: 16, kernel: 3, padding: 1}
  - batchnorm2d
  - relu
  - conv2d: {out: 32, kernel: 3, padding: 1, stride: 2}
  - batchnorm2d
  - relu
  - conv2d: {out: 32, kernel: 3, padding: 2, dilation: 2}
  - batchnorm2d
  - relu
  - conv2d: {out: 4, kernel: 1}
  - conv_transpose2d: {out: 4, kernel: 4, stride: 2, padding: 1, init: bilinear}
data: {dataset: shapes, train_count: 400, test_count: 256, batch_size: 16}
train: {epochs: 6, optimizer: {adam: {lr: 0.01}}}
""",
    "test-chars": """
name: test-chars
task: sequence
input: {vocab: 28, steps: 16}
network:
  - one_hot
  - gru: {hidden: 48}
  - linear: {out: 28}
data: {dataset: embedded_text, batch_size: 32}
train: {epochs: 2, optimizer: {adam: {lr: 0.01}}, clip_grad_norm: 1.0}
""",
    "test-text": """
name: test-text
task: classification
input: {vocab: 96, steps: 16}
network:
  - embedding: {dim: 16}
  - transformer_encoder: {heads: 2, ff: 32}
  - permute: {dims: [1, 0]}
  - global_avgpool
  - linear: {out: 3}
data: {dataset: synthetic_reviews, train_count: 600, test_count: 256, batch_size: 32}
train: {epochs: 3, optimizer: {adam: {lr: 0.01}}}
""",
}


def make_all(tmp: Path) -> dict[str, str]:
    """Run the line on the test specs, specs/sine_forecaster.yaml and specs/linear_regression.yaml; returns model
    name → stored tag."""
    paths = []
    for name, text in SPECS.items():
        (tmp / f"{name}.yaml").write_text(text)
        paths.append(tmp / f"{name}.yaml")
    paths += [ROOT / "specs" / "sine_forecaster.yaml", ROOT / "specs" / "linear_regression.yaml"]
    tags = [run_line(path, TrainOptions(out=tmp / "runs" / path.stem, device="cpu", quiet=True), quiet=True).tag
            for path in paths]
    return {tag.split(":")[0]: tag for tag in tags}
