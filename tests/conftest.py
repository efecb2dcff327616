import os
import warnings

import pytest
import torch

# One Triton config under test (interpreter runs are slow), as Fast-LLM does.
os.environ.setdefault("HETA_FAST_SKIP_AUTOTUNE", "1")
# Never reach for the hub from tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
warnings.filterwarnings("ignore", message=".*past_key_values.*")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
