"""How close the ONNX graph must be to PyTorch: numpy's allclose rule per element, |onnx − torch| ≤ atol + rtol·|torch|.

A relative term is what makes the proof scale-aware: float32 keeps ~7 significant digits, so logits of ~5,000
(a ResNet-50 after one training step) differ by ~1e-3 between two correct runtimes, while logits of ~1 differ by
~1e-7. The defaults pass that noise (relative errors of float32 sums are ~1e-6 and below) and still catch a wrong
op or a frozen axis, whose errors are of the order of the values themselves. The same Tolerance is used by the
exporter's own candidate check and by the parity proof.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3


@dataclass(frozen=True)
class Tolerance:
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    # reduced precision only (fp16 graphs): a term relative to the largest |torch| value of the output, since
    # fp16 rounding errors grow with the magnitude of the sums that made each value, not with the value itself
    range_rtol: float = 0.0

    def bound(self, want: np.ndarray) -> np.ndarray:
        want = np.abs(np.asarray(want, dtype=np.float64))
        return self.atol + self.rtol * want + (self.range_rtol * float(want.max()) if want.size else 0.0)

    def excess(self, got: np.ndarray, want: np.ndarray) -> np.ndarray:
        """Per element, |got − want| / (atol + rtol·|want| [+ range_rtol·max|want|]): ≤ 1 passes."""
        got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
        return np.abs(got - want) / self.bound(want)

    def __str__(self) -> str:
        text = f"atol {self.atol:g} + rtol {self.rtol:g}·|torch|"
        return text + (f" + {self.range_rtol:g}·max|torch|" if self.range_rtol else "")


# fp16 graphs: 11-bit mantissas (~3 decimal digits), checked against the float32 PyTorch module
FP16_TOLERANCE = Tolerance(atol=1e-3, rtol=1e-2, range_rtol=1e-2)


def relative_error(got: np.ndarray, want: np.ndarray, floor: float) -> float:
    """max |got − want| / |want| over the elements whose |want| > floor (near-zero ones say nothing relative)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    big = np.abs(want) > floor
    return float(np.max(np.abs(got - want)[big] / np.abs(want[big]))) if big.any() else 0.0
