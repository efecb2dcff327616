import copy
import os
import warnings

import pytest
import torch

from heta_fast.hf import ModelAdapter
from heta_fast.testing import TINY_ARCHS, tiny_model

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


@pytest.fixture(scope="module", params=TINY_ARCHS)
def fast_and_reference(request):
    """(arch, float32 adapter, float64 adapter) over the same frozen tiny model, for every tiny architecture."""
    model = tiny_model(request.param)
    for p in model.parameters():
        p.requires_grad_(False)
    return request.param, ModelAdapter(model), ModelAdapter(copy.deepcopy(model).double())
