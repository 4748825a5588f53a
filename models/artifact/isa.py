"""Which integer dot-product instructions this CPU has: the int8 settings and the int8 speed depend on them.

Without VNNI, x86 multiplies u8×s8 pairs into saturating 16-bit sums (AVX2's vpmaddubsw), so int8 weights must
use 7 bits (reduce_range) or sums overflow, and int8 buys ~2× over fp32. With AVX-512 VNNI or AVX-VNNI (vpdpbusd
sums into 32 bits) or AMX, full 8-bit weights are exact and faster (~3.5×); ARM's dot-product extension (sdot/udot)
is likewise exact. Read from /proc/cpuinfo (Linux), never assumed from one machine.
"""
from __future__ import annotations

import functools
import platform
from pathlib import Path

# best first: the first present names the machine
_X86 = (("amx_int8", "amx"), ("avx512_vnni", "avx512_vnni"), ("avx_vnni", "avx_vnni"), ("avx512f", "avx512"),
        ("avx2", "avx2"))
VNNI_LIKE = ("amx", "avx512_vnni", "avx_vnni", "arm_dotprod")  # exact 8-bit dot products into 32-bit sums


def _cpu_flags(cpuinfo: str) -> set[str]:
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags |= set(value.split())
    return flags


def isa_from_flags(flags: set[str], machine: str) -> str:
    """The best integer-dot-product level among `flags` ("amx", "avx512_vnni", "avx_vnni", "avx512", "avx2",
    "arm_dotprod", "arm", or "generic")."""
    if machine.lower() in ("aarch64", "arm64"):
        return "arm_dotprod" if "asimddp" in flags else "arm"
    return next((name for flag, name in _X86 if flag in flags), "generic")


@functools.cache
def cpu_isa() -> str:
    """This machine's level (see isa_from_flags)."""
    try:
        flags = _cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        flags = set()
    return isa_from_flags(flags, platform.machine())


def full_range_weights(isa: str) -> bool:
    """True where 8-bit weights are exact (VNNI-like); False where only 7-bit weights are safe (reduce_range)."""
    return isa in VNNI_LIKE


def isa_warning(model: str, quantized_for: str | None) -> str | None:
    """One line for the serving log when an int8 graph was quantized (and its speed-up measured) on another kind
    of CPU than this one; None when they agree or the report predates the record."""
    here = cpu_isa()
    if not quantized_for or quantized_for in ("unknown", here):
        return None
    weights = "full 8-bit" if full_range_weights(quantized_for) else "7-bit"
    return (f"{model}: its int8 graph was quantized for a {quantized_for} CPU ({weights} weights) and this one is "
            f"{here}: its accuracy and speed-up were measured there, not here")
