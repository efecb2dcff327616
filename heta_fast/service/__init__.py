"""HTTP frontends for heta_fast: a JSON service (:mod:`.app`) and a Gradio web demo (:mod:`.demo`).

Both share one :class:`~heta_fast.service.attribution.AttributionService`: one model, loaded once, used by one
request at a time (the recording attention keeps per-thread state and the model is not thread-safe).
``import heta_fast.service`` imports neither FastAPI nor Gradio; :mod:`.app` and :mod:`.demo` do.
"""

from __future__ import annotations

__all__ = ["AttributionService", "ServiceLimits", "create_app"]


def __getattr__(name):
    # Lazy so that ``heta-fast attribute`` never pays for importing FastAPI through the CLI hook.
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "AttributionService":
        from .attribution import AttributionService

        return AttributionService
    if name == "ServiceLimits":
        from .limits import ServiceLimits

        return ServiceLimits
    raise AttributeError(name)
