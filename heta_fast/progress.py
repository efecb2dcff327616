"""Progress bars for long work (one per stage: targets, windows, Hessian–vector products, masked tokens), and
the caller's stop check, which runs at the same places: between chunks of work."""

from __future__ import annotations

from collections.abc import Callable

from .errors import HetaCancelled

StopCheck = Callable[[], bool]


def check_stop(should_stop: StopCheck | None) -> None:
    """Raise :class:`~heta_fast.errors.HetaCancelled` when the caller's ``should_stop()`` says so."""
    if should_stop is not None and should_stop():
        raise HetaCancelled("the attribution was stopped by its should_stop check")


def progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


class StageBars:
    """One bar per long stage of a component run, created on first use; ``update`` is the engine's
    ``progress(stage, n)`` callback, called between chunks of work, so it also checks ``should_stop``."""

    LABELS = {"S": "Hessian-vector products", "I": "masked tokens (KL)"}

    def __init__(self, enabled: bool, totals: dict, should_stop: StopCheck | None = None, prefix: str = ""):
        self.enabled, self.totals, self.bars, self.should_stop = enabled, totals, {}, should_stop
        self.prefix = prefix  # e.g. "level 1: " for the levels of a unit run

    def update(self, stage: str, n: int) -> None:
        check_stop(self.should_stop)
        if not self.enabled:
            return
        if stage not in self.bars:
            self.bars[stage] = progress_bar(self.totals.get(stage) or 0, self.prefix + self.LABELS.get(stage, stage), True)
        self.bars[stage].update(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for bar in self.bars.values():
            bar.close()
