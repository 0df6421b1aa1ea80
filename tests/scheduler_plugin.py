"""A scheduler defined outside the package, registered the way a module of a researcher's own
does it: one class and its decorator (test_schedulers.py runs it through ``snn-stp`` with
``SNN_STP_PLUGINS=scheduler_plugin``)."""

from snn_stp.pruning import ShapedThreshold, register_threshold_scheduler


@register_threshold_scheduler("test_cubic")
class Cubic(ShapedThreshold):
    """``d_t = D x^3``: a late threshold schedule (a plugin for the tests)."""

    def shape(self, x: float) -> float:
        return x ** 3
