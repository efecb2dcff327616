"""heta_fast: fast, exact HETA token attribution for decoder-only language models.

``import heta_fast`` never imports transformers and never fails because the compiled extension is
missing; ``python -m heta_fast.env`` reports what was found.
"""

from .api import Attributor, attribute
from .errors import (
    HetaCancelled,
    HetaError,
    HetaInputError,
    MemoryBudgetError,
    NumericalError,
    UnsupportedModelError,
)
from .options import PRESETS, HetaOptions
from .result import Attribution, AttributionSequence

__version__ = "0.1.0"

__all__ = [
    "Attributor",
    "attribute",
    "Attribution",
    "AttributionSequence",
    "HetaOptions",
    "PRESETS",
    "HetaCancelled",
    "HetaError",
    "HetaInputError",
    "MemoryBudgetError",
    "NumericalError",
    "UnsupportedModelError",
]
