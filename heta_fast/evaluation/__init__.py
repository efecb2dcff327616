"""Evaluation of attributions: faithfulness metrics, baselines, the curated-set runner.

- :mod:`.metrics`: Soft-NC/NS, hard AOPC comprehensiveness/sufficiency, DSA, F1 alignment, Spearman stability.
- :mod:`.baselines`: attention rollout, gradient norm, input×gradient, integrated gradients, leave-one-out.
- :mod:`.data`: curated examples (released JSON or JSONL) with segments as character spans.
- :mod:`.curated`: the resumable runner and its report (``heta-fast eval curated``).

The attention-sink treatment the runner evaluates is a library option (``sink_token``, :mod:`heta_fast.sinks`).
"""
