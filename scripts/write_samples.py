"""Write example request inputs for the demo's curl commands, from the embedded datasets (no files needed):
a handwritten digit PNG, a generated-shapes PNG and a sine series JSON, into the folder given (default runs/samples)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from models.data import load_dataset


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    digits = load_dataset("digits", {})
    index = 2  # any test image; the model's accuracy is in runs/demo/digits_cnn/metrics.json
    digit = digits.test_x[index, 0].numpy()  # (8, 8) uint8
    Image.fromarray(digit, "L").save(out / "digit.png")  # 8×8 as in the data set: the service resizes to the input size
    shapes = load_dataset("shapes", {"train_count": 1, "test_count": 1})
    Image.fromarray(shapes.test_x[0].permute(1, 2, 0).numpy(), "RGB").save(out / "shapes.png")
    series = load_dataset("sine", {})
    values = series.series[-40:].numpy().round(4).tolist()
    (out / "series.json").write_text(json.dumps({"values": values, "k": 8}))
    print(f"samples in {out}: digit.png (label {int(digits.test_y[index])}), shapes.png, series.json")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/samples"))
