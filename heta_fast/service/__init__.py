"""HTTP frontends for heta_fast: a JSON service (:mod:`.app`) and a Gradio web demo (:mod:`.demo`).

Both share one :class:`~heta_fast.service.app.AttributionService`: one model, loaded once, used by one
request at a time (the recording attention keeps per-thread state and the model is not thread-safe).
``import heta_fast.service`` imports neither FastAPI nor Gradio; the submodules do.
"""

from __future__ import annotations

__all__ = ["AttributionService", "create_app"]


def __getattr__(name):
    # Lazy so that ``heta-fast attribute`` never pays for importing FastAPI through the CLI hook.
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(name)
