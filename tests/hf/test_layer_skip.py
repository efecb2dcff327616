"""A forward that swaps the input of layer j (curvature over the last k layers) does not compute layers 0 … j−1:
their output is thrown away. The logits must equal those of the forward that runs them, on every family."""

import pytest
import torch

from heta_fast.hf import ModelAdapter
from heta_fast.models import MORE_TINY_ARCHS, TINY_ARCHS, tiny_model
from heta_fast.testing import random_ids


@pytest.mark.parametrize("arch", TINY_ARCHS + MORE_TINY_ARCHS)
def test_swapped_forward_skips_earlier_layers_with_the_same_logits(arch):
    adapter = ModelAdapter(tiny_model(arch))
    ids = random_ids(12, seed=1)
    j = adapter.num_layers - 1
    calls = []
    handles = [attn.register_forward_pre_hook(lambda *_, k=k: calls.append(k)) for k, attn in enumerate(adapter.attentions)]
    with torch.no_grad(), adapter.attached():
        X = adapter.embed(ids)
        with adapter.record(layer_inputs=True) as rec:
            adapter.forward(X)  # learns what a layer returns
        assert adapter._layer_output_form >= 0, arch
        h = rec.layer_inputs[j] + 0.1 * torch.randn_like(rec.layer_inputs[j])  # a point off the clean run
        calls.clear()
        skipped = adapter.forward(X, replace_layer_input=(j, h)).logits
        assert calls == [j], arch  # only the swapped layer's attention ran
        form, adapter._layer_output_form = adapter._layer_output_form, -1  # never skip
        try:
            full = adapter.forward(X, replace_layer_input=(j, h)).logits
        finally:
            adapter._layer_output_form = form
    for hd in handles:
        hd.remove()
    assert calls[-adapter.num_layers:] == list(range(adapter.num_layers))
    torch.testing.assert_close(skipped, full, rtol=0, atol=0)
