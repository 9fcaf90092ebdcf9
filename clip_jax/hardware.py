"""Accelerator peak throughput, for model FLOPs utilisation (MFU)."""

from __future__ import annotations

import jax

# Dense bf16 peak FLOP/s per chip (per device as JAX sees it), from the vendors' spec sheets.
# Order matters: the first substring found in `device_kind` wins ("TPU v5 lite" before "TPU v5").
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v6 lite", 918e12),
    ("TPU v6e", 918e12),
    ("A100", 312e12),
    ("H100", 989e12),
)


def peak_flops(device: jax.Device | None = None, override: float | None = None) -> float | None:
    """Peak FLOP/s of one device: `override` if given, the table's entry, or None (unknown)."""
    if override:
        return float(override)
    kind = (device or jax.devices()[0]).device_kind
    return next((peak for name, peak in PEAK_FLOPS if name in kind), None)
