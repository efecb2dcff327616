"""Errors that tell the user what is wrong and what to change."""


class HetaError(Exception):
    """Base class of every error heta_fast raises on purpose."""


class HetaInputError(HetaError, ValueError):
    """The text, ids, target or options cannot be explained as given."""


class UnsupportedModelError(HetaError, TypeError):
    """The model lacks something HETA needs (causal attention, an output projection, ...)."""


class NumericalError(HetaError, FloatingPointError):
    """The model produced NaN/Inf, so no attribution would mean anything."""


class MemoryBudgetError(HetaError, MemoryError):
    """The requested work does not fit in the memory budget; the message names the option to change."""
