"""Evaluation of attributions: faithfulness metrics, baselines, the curated-set runner, sink treatment.

- :mod:`.metrics`: Soft-NC/NS, hard AOPC comprehensiveness/sufficiency, DSA, F1 alignment, Spearman stability.
- :mod:`.baselines`: attention rollout, gradient norm, input×gradient, integrated gradients, leave-one-out.
- :mod:`.data`: curated examples (released JSON or JSONL) with segments as character spans.
- :mod:`.curated`: the resumable runner and its report (``heta-fast eval curated``).
- :mod:`.sinks`: :func:`attribute_with_sink`, HETA with a sink token prepended and excluded.
"""

from .sinks import attribute_with_sink, default_sink_id

__all__ = ["attribute_with_sink", "default_sink_id"]
