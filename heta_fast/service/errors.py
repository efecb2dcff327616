"""What the service answers when it does not return a result: each error knows its HTTP status and the
request field it is about."""

from __future__ import annotations

from ..errors import HetaError, HetaInputError


class FieldError(HetaInputError):
    """Bad input, with the request field it concerns (``"options.num_probes"``) and the HTTP status."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(message, field=field)
        self.status = status


class ServiceBusy(HetaError):
    """The model is taken and the queue is full (or the wait ran past ``max_wait``): 503 with Retry-After."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class ClientGone(HetaError):
    """The client disconnected, so its request was dropped (from the queue, or stopped between chunks of work)."""
