"""The STDS threshold shapes (sine and linear): most of d moves late, so the implied L1
coefficient blows up at the end; with a target sparsity D is re-aimed until the end."""

from __future__ import annotations

from .. import schedules
from .registry import register_threshold_scheduler
from .scheduled import ShapedThreshold


@register_threshold_scheduler("sine")
class Sine(ShapedThreshold):
    """STDS sine schedule ``(1 - cos(pi x)) / 2``.

    It moves half of d in the last half of the run, so the sparsity at mid-run says little about
    the end: with ``target_sparsity`` D is re-aimed from the weights until the end
    (``calibration_style = "throughout"``), which bends the shape (the last steps carry what the
    re-aiming adds).
    """

    calibration_style = "throughout"
    knob = ("final_threshold D (weight units). Or target_sparsity (0-1): D is re-aimed from the weights until the "
            "end, which bends the sine shape (a late pruning schedule cannot be calibrated early)")

    def shape(self, x: float) -> float:
        return schedules.sine(x)


@register_threshold_scheduler("linear")
class Linear(ShapedThreshold):
    """STDS linear schedule ``f(x) = x`` (with ``target_sparsity``: re-aimed until the end, as sine)."""

    calibration_style = "throughout"
    knob = Sine.knob.replace("sine", "linear")

    def shape(self, x: float) -> float:
        return schedules.linear(x)
