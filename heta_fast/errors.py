"""Errors that tell the user what is wrong and what to change."""


class HetaError(Exception):
    """Base class of every error heta_fast raises on purpose."""


class HetaInputError(HetaError, ValueError):
    """The text, ids, target or options cannot be explained as given.

    ``field`` names what the message is about when that is known (an option name such as ``"layers"``),
    so front ends can point at the exact request field instead of guessing from the message.
    """

    def __init__(self, message: str = "", *, field: str | None = None):
        super().__init__(message)
        self.field = field


class UnsupportedModelError(HetaError, TypeError):
    """The model lacks something HETA needs (causal attention, an output projection, ...)."""


class NumericalError(HetaError, FloatingPointError):
    """The model produced NaN/Inf, so no attribution would mean anything."""


class MemoryBudgetError(HetaError, MemoryError):
    """The requested work does not fit in the memory budget; the message names the option to change."""


class HetaCancelled(HetaError):
    """The caller's ``should_stop`` check asked to stop before the attribution finished (nothing is returned)."""


class BatchError(HetaError):
    """A batch job cannot go on as asked (corrupt output, output from a different input, ...)."""
