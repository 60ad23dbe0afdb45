"""How well a run uses its hardware: the FLOPs of a compiled step (XLA's cost analysis), the
devices' peak, the throughput scalars of a logged step, and a `jax.profiler` window.

The FLOPs are those XLA counts in the compiled program: under SPMD partitioning that program is
one device's share, so the achieved rate and the MFU are per device. Counted FLOPs include what
the model's formula would leave out (the optimizer, the EMA, norms); MFU from them is therefore a
little above MFU from 6·N·tokens.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax

log = logging.getLogger("crossmodal_jax")

# Dense bfloat16 peak TFLOP/s of one device, by the start of `device.device_kind` (the first match
# wins, so longer names come first). From the vendors' data sheets: TPU per chip; NVIDIA SXM
# parts (a PCIe H100 peaks at 756: pass --config.peak_tflops). A device not listed has no MFU
# unless the config gives its peak.
PEAK_TFLOPS = (
    ("TPU v6 lite", 918.0),
    ("TPU v5 lite", 197.0),
    ("TPU v5", 459.0),
    ("TPU v4", 275.0),
    ("TPU v3", 123.0),
    ("NVIDIA B200", 2250.0),
    ("NVIDIA H200", 989.0),
    ("NVIDIA H100", 989.0),
    ("NVIDIA A100", 312.0),
)


def device_peak_tflops(device_kind: str, configured: float = 0.0) -> float:
    """Peak TFLOP/s of one device: the configured value, else the table's, else 0 (unknown)."""
    if configured > 0:
        return float(configured)
    for prefix, peak in PEAK_TFLOPS:
        if device_kind.startswith(prefix):
            return peak
    return 0.0


def step_flops(compiled: Any) -> float:
    """FLOPs of one call of a compiled function on one device (0 if XLA does not say)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per program
        analysis = analysis[0] if analysis else {}
    return float((analysis or {}).get("flops", 0.0))


@dataclasses.dataclass(frozen=True)
class Throughput:
    """Turns a step rate into the logged throughput scalars of one stage."""

    global_batch: int  # examples a step
    flops_per_step: float  # one device's FLOPs a step
    peak_tflops: float  # one device's peak; 0 = unknown (no MFU)

    def scalars(self, steps_per_sec: float) -> dict[str, float]:
        out = {"examples_per_sec": steps_per_sec * self.global_batch}
        if self.flops_per_step > 0:
            tflops = steps_per_sec * self.flops_per_step / 1e12
            out["tflops_per_device"] = tflops
            if self.peak_tflops > 0:
                out["mfu"] = tflops / self.peak_tflops
        return out


def describe(scalars: dict[str, float]) -> str:
    """The throughput part of a progress line ('' before the rate is known)."""
    parts = []
    if "examples_per_sec" in scalars:
        parts.append(f"{scalars['examples_per_sec']:.4g} examples/s")
    if "tflops_per_device" in scalars:
        parts.append(f"{scalars['tflops_per_device']:.3g} TFLOP/s a device")
    if "mfu" in scalars:
        parts.append(f"MFU {100 * scalars['mfu']:.1f} %")
    return ", ".join(parts)


def parse_profile_steps(spec: str) -> tuple[int, int] | None:
    """'a,b' -> (a, b): profile steps a..b (1-based, inclusive); '' -> None. ValueError if bad."""
    if not spec.strip():
        return None
    parts = spec.split(",")
    try:
        first, last = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"expected two step numbers 'a,b', got {spec!r}") from None
    if not 1 <= first <= last:
        raise ValueError(f"expected 1 <= a <= b, got {spec!r}")
    return first, last


class ProfileWindow:
    """A `jax.profiler` trace of steps a..b of a stage, written to `<stage_dir>/profile` (open it
    with TensorBoard's profile plugin or xprof). Steps already taken when the stage resumes past
    `a` are not traced."""

    def __init__(self, steps: tuple[int, int] | None, stage_dir: str):
        self.steps, self.directory = steps, os.path.join(stage_dir, "profile")
        self.active = False

    def before(self, step: int) -> None:
        """Call before the update that makes `step` (1-based)."""
        if self.steps and step == self.steps[0] and not self.active:
            jax.profiler.start_trace(self.directory)
            self.active = True

    def after(self, step: int, outputs: Any) -> None:
        """Call after the update that made `step`; stops once the window's last step is done."""
        if self.active and step >= self.steps[1]:
            self.stop(outputs)

    def stop(self, outputs: Any = None) -> None:
        if self.active:
            jax.block_until_ready(outputs)  # the traced steps' device work, not only dispatch
            jax.profiler.stop_trace()
            self.active = False
            log.info("profile of steps %d-%d: %s", *self.steps, self.directory)
