"""Dataset-scale HETA: resumable JSONL batch jobs, sharded over processes / GPUs with torch.distributed.

Command line: ``heta-fast batch IN.jsonl OUT.jsonl [options]`` (or ``torchrun ... -m heta_fast.batch ...``).
Python::

    from heta_fast.batch import run_batch, read_results
    summary = run_batch(attributor, "in.jsonl", "out.jsonl")
    for line in read_results("out.jsonl"):
        print(line["key"], line["result"]["scores"])
"""

from ..errors import BatchError
from .distributed import DistContext, setup
from .jobs import BatchSummary, errors_path, parts_dir, read_results, run_batch

__all__ = [
    "BatchError",
    "BatchSummary",
    "DistContext",
    "errors_path",
    "parts_dir",
    "read_results",
    "run_batch",
    "setup",
]
