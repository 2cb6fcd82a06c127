"""CAM methods: one small base class (``base.CamMethod``), one short subclass per method, a
registry, and ``compute_maps`` which runs the shared explain graph once for all of them.
"""

from __future__ import annotations

# Importing the method modules registers their classes (in this order: known_methods()'s order).
from camserve.methods import activation as _activation  # noqa: F401  (cam, eigencam, scorecam, ablationcam)
from camserve.methods import gradient as _gradient  # noqa: F401  (gradcam ... hirescam)
from camserve.methods import guided as _guided  # noqa: F401  (guidedbackprop, guidedgradcam)

# isort: split
# The methods of issue 24 after the seeds, so known_methods() lists the seeds first.
from camserve.methods import eigen as _eigen  # noqa: F401  (eigengradcam, kpcacam)
from camserve.methods import fem as _fem  # noqa: F401  (fem)
from camserve.methods import fullgrad as _fullgrad  # noqa: F401  (fullgrad)
from camserve.methods import gradient_variants as _gradient_variants  # noqa: F401  (gradcamelementwise ...)
from camserve.methods import score_variants as _score_variants  # noqa: F401  (sscam, iscam)

# isort: split
from camserve.methods.base import (
    CamMethod,
    MethodContext,
    MethodMaps,
    get_method,
    known_methods,
    method_class,
)
from camserve.methods.compute import ComputedMaps, compute_maps, parse_methods
from camserve.methods.targets import parse_targets, resolve_targets

__all__ = [
    "CamMethod",
    "ComputedMaps",
    "MethodContext",
    "MethodMaps",
    "compute_maps",
    "get_method",
    "known_methods",
    "method_class",
    "parse_methods",
    "parse_targets",
    "resolve_targets",
]
