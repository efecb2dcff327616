"""heta_fast leaves the user's model exactly as it was: outputs, attentions, hidden states, generation, train/eval
mode, requires_grad flags, attention implementation and hooks, after an attribution, after one that raised or
was interrupted, with two Attributors on one model, and while another thread uses the model.

The rule (heta_fast/hf/adapter.py): heta_fast runs on a working view of the model that shares its weights;
nothing is installed on the model itself. One Attributor runs one call at a time (a lock); other threads and
other Attributors using the same model are not blocked and never see heta_fast's attention or hooks.
"""

import threading

import pytest
import torch

from heta_fast import Attributor, HetaInputError
from heta_fast.models import MORE_TINY_ARCHS, TINY_ARCHS, tiny_model
from heta_fast.testing import random_ids

IDS = random_ids(7, seed=11)


def user_model(arch):
    """A model as a user might hold it: eager attention (so output_attentions returns the maps), in train mode
    with one submodule in eval mode, some parameters frozen and some not."""
    model = tiny_model(arch)
    model.set_attn_implementation("eager")
    model.train()
    model.get_output_embeddings().eval()
    for i, p in enumerate(model.parameters()):
        p.requires_grad_(i % 2 == 0)
    return model


def flags(model):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            model.config._attn_implementation,
            [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()])


def outputs(model):
    """Logits, every attention map and hidden state, and a greedy generation, in eval mode (flags put back)."""
    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            out = model(IDS[None], output_attentions=True, output_hidden_states=True)
            gen = model.generate(IDS[None], attention_mask=torch.ones_like(IDS[None]), max_new_tokens=3,
                                 do_sample=False, pad_token_id=0)
    finally:
        for m, mode in zip(model.modules(), modes, strict=True):
            m.training = mode
    assert len(out.attentions) == model.config.get_text_config().num_hidden_layers  # the maps, not ()
    return out.logits, out.attentions, out.hidden_states, gen


def assert_same(a, b):
    logits, attentions, hidden, gen = a
    logits2, attentions2, hidden2, gen2 = b
    assert torch.equal(logits, logits2) and torch.equal(gen, gen2)
    assert len(attentions) == len(attentions2) and all(map(torch.equal, attentions, attentions2))
    assert len(hidden) == len(hidden2) and all(map(torch.equal, hidden, hidden2))


@pytest.mark.parametrize("arch", TINY_ARCHS + MORE_TINY_ARCHS)
def test_model_is_unchanged_by_attribution(arch, monkeypatch):
    model = user_model(arch)
    before = outputs(model)
    state = flags(model)  # after a first use: transformers installs its output-capturing hooks on first use
    attributor = Attributor(model)
    assert flags(model) == state
    assert_same(outputs(model), before)  # between construction and the first call
    first = attributor.attribute(IDS, num_probes=1)
    assert flags(model) == state
    assert_same(outputs(model), before)

    # An exception and an interrupt in the middle of a call (after the gate's recorded forward): the model is
    # untouched and the Attributor still gives the same numbers afterwards.
    import heta_fast.engine as engine

    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        def fail(*args, exc=exc, **kwargs):
            raise exc

        monkeypatch.setattr(engine, "information_batched", fail)
        with pytest.raises(type(exc)):
            attributor.attribute(IDS, components=("M", "I"))
        monkeypatch.undo()
        assert flags(model) == state
        assert_same(outputs(model), before)
    with pytest.raises(HetaInputError):
        attributor.attribute(IDS, num_probes=0)
    again = attributor.attribute(IDS, components=("M", "I"))
    assert again.M == first.M and again.I == first.I
    # The view heta_fast ran on holds no leftover hooks of heta_fast's either (only the model's own).
    assert flags(attributor.adapter.model)[3] == state[3]


def test_train_mode_model_is_explained_in_eval_mode():
    """The fast paths need dropout off: a model left in train mode is explained as in eval mode."""
    model = tiny_model("gpt2")  # dropout 0.1 in train mode
    want = Attributor(model).attribute(IDS, num_probes=1)
    model.train()
    got = Attributor(model).attribute(IDS, num_probes=1)
    assert got.scores == want.scores and model.training


def test_two_attributors_on_one_model():
    model = user_model("llama")
    before = outputs(model)
    state = flags(model)  # after a first use: transformers installs its output-capturing hooks on first use
    a, b = Attributor(model), Attributor(model, options=Attributor(model).options.replace(num_probes=1))
    ra, rb = a.attribute(IDS, num_probes=1), b.attribute(IDS)
    assert ra.scores == rb.scores
    # Interleaved on two threads: the same numbers as one after the other.
    results = {}

    def run(name, attributor):
        results[name] = [attributor.attribute(IDS, num_probes=1).scores for _ in range(3)]

    threads = [threading.Thread(target=run, args=(n, x)) for n, x in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(s == ra.scores for name in "ab" for s in results[name])
    assert flags(model) == state
    assert_same(outputs(model), before)


def test_one_attributor_from_two_threads_runs_one_call_at_a_time():
    attributor = Attributor(tiny_model("qwen2"))
    want = attributor.attribute(IDS, num_probes=1).scores
    results = []
    threads = [threading.Thread(target=lambda: results.append(attributor.attribute(IDS, num_probes=1).scores))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [want] * 3


def test_generate_and_output_attentions_in_another_thread_never_see_heta_fast():
    """While an attribution runs, another thread's generate and output_attentions give exactly what they gave
    before (the model's own eager attention, not heta_fast's recording one)."""
    model = user_model("llama")
    model.eval()
    before = outputs(model)
    attributor = Attributor(model)
    stop, seen, errors = threading.Event(), [], []

    def use_model():
        try:
            while not stop.is_set():
                seen.append(outputs(model))
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    thread = threading.Thread(target=use_model)
    thread.start()
    try:
        for _ in range(3):
            attributor.attribute(IDS, num_probes=1)
            attributor.attribute(IDS, generate=2, num_probes=1, components=["M"])
    finally:
        stop.set()
        thread.join()
    assert not errors and seen
    for out in seen:
        assert_same(out, before)


def test_the_view_follows_changes_to_the_model():
    """Weights changed in place, or the model converted (new storage and dtype): the next call uses them."""
    model = tiny_model("llama")
    attributor = Attributor(model)
    first = attributor.attribute(IDS, num_probes=1)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(1.5)
    changed = attributor.attribute(IDS, num_probes=1)
    fresh = Attributor(model).attribute(IDS, num_probes=1)
    assert changed.scores == fresh.scores != first.scores
    ref = attributor.attribute(IDS, num_probes=1, engine="reference")  # the float64 copy follows too
    assert max(abs(a - b) for a, b in zip(ref.scores, changed.scores)) < 1e-4 * max(changed.scores)
    model.double()
    assert attributor.attribute(IDS, num_probes=1).scores == pytest.approx(changed.scores, rel=1e-4)
    assert attributor.adapter.dtype == torch.float64
    # Re-entrant: a call made while this thread already holds the adapter.
    with attributor.adapter.attached():
        assert attributor.attribute(IDS, num_probes=1).scores == pytest.approx(changed.scores, rel=1e-4)
