"""Progress bars for long work: one per stage (targets, windows, Hessian–vector products, masked tokens)."""

from __future__ import annotations


def progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


class StageBars:
    """One bar per long stage of a component run, created on first use; ``update`` is the engine's
    ``progress(stage, n)`` callback."""

    LABELS = {"S": "Hessian-vector products", "I": "masked tokens (KL)"}

    def __init__(self, enabled: bool, totals: dict):
        self.enabled, self.totals, self.bars = enabled, totals, {}

    def update(self, stage: str, n: int) -> None:
        if not self.enabled:
            return
        if stage not in self.bars:
            self.bars[stage] = progress_bar(self.totals.get(stage) or 0, self.LABELS.get(stage, stage), True)
        self.bars[stage].update(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for bar in self.bars.values():
            bar.close()
