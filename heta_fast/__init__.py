"""heta_fast: fast, exact HETA token attribution for decoder-only language models.

``import heta_fast`` never imports transformers and never fails because the compiled extension is
missing; ``python -m heta_fast.env`` reports what was found. It sets one environment variable, torch's
``THP_MEM_ALLOC_ENABLE=1`` (huge pages for large CPU blocks; not where it is set already or with
``HETA_FAST_MALLOC_TUNING=0``: :mod:`heta_fast.cpu_allocator`).
"""

# Before torch is imported: torch reads its huge-page switch once, at its first CPU allocation (cpu_allocator).
from .cpu_allocator import request_huge_pages

request_huge_pages()

from .api import Attributor, attribute  # noqa: E402
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
