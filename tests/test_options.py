"""One description of the options: every front end exposes every option, and all of them check values alike."""

import ast
import json
import math
from pathlib import Path

import pytest

from heta_fast import HetaInputError, HetaOptions, cli
from heta_fast.batch import cli as batch_cli
from heta_fast.batch.records import parse_line
from heta_fast.options import (
    CLI_NONE,
    OPTION_NAMES,
    OPTION_SPECS,
    options_from_preset,
    options_markdown,
    overrides_from_args,
    resolve_layers,
)

ROOT = Path(__file__).resolve().parents[1]


def _parsers():
    """The argparse parsers of ``heta-fast attribute`` and ``heta-fast batch``."""
    main = cli.build_parser()
    sub = next(a for a in main._actions if a.dest == "command")
    return {"attribute": sub.choices["attribute"], "batch": sub.choices["batch"]}


def _flags(parser) -> dict[str, str]:
    return {opt: a.dest for a in parser._actions for opt in a.option_strings}


def _sample(spec):
    """A valid non-default JSON value of the option (exercises the front end's type handling)."""
    if spec.many:
        return ["M", "I"]
    if spec.spans:
        return [[0, 2]]
    if spec.name == "units":
        return "sentence"
    if spec.number is int:
        return int(spec.minimum or 0) + 1
    if spec.number is float:
        return 0.25
    return spec.words[-1]


@pytest.mark.parametrize("spec", OPTION_SPECS, ids=lambda s: s.name)
def test_every_front_end_exposes_every_option(spec):
    """A new HetaOptions field appears in both command lines, the service schema, batch records and the docs."""
    from heta_fast.service.schema import AttributeOptions

    for name, parser in _parsers().items():
        assert _flags(parser).get(spec.flag) == spec.name, f"heta-fast {name} has no {spec.flag}"
    assert spec.name in AttributeOptions.model_fields, "the service's request schema misses it"
    value = _sample(spec)
    extra = {"mask": {"mask_token_id": 3}, "refine": {"units": "sentence"}, "coarse": {"units": "sentence"}}.get(
        spec.name, {})
    rec = parse_line(json.dumps({"text": "abc", spec.name: value, **extra}).encode(), 1, "job", HetaOptions())
    assert rec.error is None and rec.overrides[spec.name] == value, rec.error
    assert f"| `{spec.name}` |" in options_markdown()
    # The command line reads the same value back (lists as "M,I").
    if spec.spans:  # character spans as START:END,START:END
        text, expected = ",".join(f"{a}:{b}" for a, b in value), tuple(tuple(sp) for sp in value)
    else:
        text = ",".join(value) if isinstance(value, list) else str(value)
        expected = tuple(value) if isinstance(value, list) else value
    for name, parser in _parsers().items():
        args = parser.parse_args((["in", "out"] if name == "batch" else ["x"]) + [spec.flag, text])
        assert overrides_from_args(args) == {spec.name: expected}


def test_readme_options_table_is_generated_from_the_specs():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- options table:")
    body = readme[readme.index("\n", start) + 1 : readme.index("<!-- end of options table -->")]
    assert body == options_markdown(), "regenerate the README table with heta_fast.options.options_markdown()"


def test_no_front_end_redeclares_an_option():
    """No command line declares an option's flag itself, and no service/batch class redeclares the options."""
    pkg = ROOT / "heta_fast"
    for path in pkg.rglob("*.py"):
        if path.name == "options.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument" and node.args:
                flag = getattr(node.args[0], "value", None)
                assert flag not in {s.flag for s in OPTION_SPECS}, f"{path.name} declares {flag} itself"
            if isinstance(node, ast.ClassDef) and path.parent.name in ("service", "batch"):
                fields = {t.target.id for t in node.body if isinstance(t, ast.AnnAssign) and isinstance(t.target, ast.Name)}
                assert len(fields & set(OPTION_NAMES)) < 3, f"{path.name}: {node.name} redeclares options"


def test_production_code_does_not_import_the_test_helpers():
    for path in (ROOT / "heta_fast").rglob("*.py"):
        if path.name == "testing.py":
            continue
        text = path.read_text()
        assert "from ..testing" not in text and "from .testing" not in text and "heta_fast.testing" not in text, path
    from heta_fast import testing, tokenizers

    assert testing.CharTokenizer is tokenizers.CharTokenizer


# --------------------------------------------------------------------------------------- validation
def _bad_values(spec):
    """Values every option must refuse, from its spec: wrong types, non-finite numbers, out of range."""
    bad = [{"a": 1}, True]
    if not spec.nullable:
        bad.append(None)
    if spec.number is not None:
        bad += [math.nan, math.inf, -math.inf, "1"]
        if spec.minimum is not None:
            bad.append(spec.minimum - 1)
        if spec.maximum is not None:
            bad.append(spec.maximum * 2 + 1)
        if spec.below is not None:
            bad.append(spec.below)
        if spec.number is int:
            bad.append(2.5)
    else:
        bad.append("no-such-choice")
    if spec.many:
        bad += ["MI", [], ["X"], [1]]
    return bad


@pytest.mark.parametrize("spec", OPTION_SPECS, ids=lambda s: s.name)
def test_every_option_refuses_bad_values_naming_itself(spec):
    for value in _bad_values(spec):
        with pytest.raises(HetaInputError) as info:
            HetaOptions(**{spec.name: value})
        assert info.value.field == spec.name and str(info.value).startswith(spec.name), (value, str(info.value))
        with pytest.raises(HetaInputError):
            HetaOptions().replace(**{spec.name: value})
    assert getattr(HetaOptions(), spec.name) == spec.default


def test_values_are_normalised():
    o = HetaOptions(beta=1, components=["i", "m", "I"])
    assert isinstance(o.beta, float) and o.beta == 1.0
    assert o.components == ("I", "M")
    assert HetaOptions(components=("S",)).to_dict()["components"] == ["S"]
    import numpy as np

    assert HetaOptions(num_probes=np.int64(4), gamma=np.float32(0.25)).num_probes == 4


def test_unknown_options_and_cross_field_rules():
    with pytest.raises(HetaInputError, match="unknown option 'num_probe'") as info:
        HetaOptions().replace(num_probe=3)
    assert info.value.field == "num_probe"
    with pytest.raises(HetaInputError, match="unknown option"):
        options_from_preset("fast", bogus=1)
    with pytest.raises(HetaInputError, match="mask_token_id") as info:
        HetaOptions(mask="token")
    assert info.value.field == "mask"
    with pytest.raises(HetaInputError, match="only 2 layers") as info:
        resolve_layers(3, 2)
    assert info.value.field == "layers"
    assert resolve_layers(2, 2) == 2 and resolve_layers("auto", 2) is None and resolve_layers("auto", 8) == 6


def test_library_refuses_non_finite_options_before_any_work():
    from heta_fast import Attributor
    from heta_fast.testing import CharTokenizer, tiny_model

    attributor = Attributor(tiny_model("llama"), CharTokenizer())
    calls = []
    attributor.adapter.forward = lambda *a, **k: calls.append(1)  # any model call would show up here
    for bad in ({"beta": math.nan}, {"gamma": math.inf}, {"overlap": 1.0}, {"layers": 3}, {"sink_token": 97}):
        with pytest.raises(HetaInputError) as info:
            attributor.attribute("abc", **bad)
        assert info.value.field == next(iter(bad))
    assert not calls


# --------------------------------------------------------------------------------------- command line
@pytest.mark.parametrize("argv, message", [
    (["--beta", "nan"], "--beta: must be a finite number"),
    (["--gamma", "inf"], "--gamma: must be a finite number"),
    (["--overlap", "1"], "--overlap: must be a finite number >= 0 and < 1"),
    (["--num-probes", "0"], "--num-probes: must be an integer >= 1"),
    (["--layers", "many"], "--layers: must be an integer >= 1, 'auto' or 'all'"),
    (["--rollout", "magic"], "--rollout: must be one of 'flow', 'reference'"),
    (["--components", "M,X"], "--components: must be a comma-separated list"),
])
def test_command_lines_refuse_bad_values(argv, message, capsys):
    for prefix in (["attribute", "x"], ["batch", "in.jsonl", "out.jsonl"]):
        with pytest.raises(SystemExit) as info:
            cli.build_parser().parse_args(prefix + argv)
        assert info.value.code == 2 and message in capsys.readouterr().err


def test_command_line_none_words_and_validation_before_loading(capsys):
    parser = _parsers()["attribute"]
    args = parser.parse_args(["x", "--layers", "all", "--sink-token", "none", "--window", "none"])
    assert args.layers is CLI_NONE
    assert overrides_from_args(args) == {"layers": None, "sink_token": None, "window": None}
    # A cross-field error fails before the model loads ("default" would take seconds to load).
    assert cli.main(["attribute", "x", "--mask", "token", "--model", "/no/such/model"]) == 2
    assert "mask_token_id" in capsys.readouterr().err
    assert cli.main(["attribute", "\ud800", "--model", "/no/such/model"]) == 2
    assert "lone surrogate" in capsys.readouterr().err
    assert batch_cli.main(["in.jsonl", "out.jsonl", "--mask", "token", "--tiny-model", "llama", "--quiet"]) == 2
