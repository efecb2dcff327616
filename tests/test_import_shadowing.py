"""Nothing in the repository shadows an installed package.

The repository root lands on ``sys.path`` whenever Python starts there (``python -c``, ``python -m``, a
notebook opened in the checkout). A top-level folder with an ``__init__.py`` there would then win over an
installed package of the same name: the Triton folder ``kernels/`` did so against Hugging Face's
``kernels``, which ``transformers.modeling_utils`` imports from 5.25 on, and every ``import transformers``
from the root failed. These tests run Python from the root as a user would.
"""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, *, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    """``python -c code`` started in the repository root (so the root is sys.path[0], as for a user)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_only_heta_fast_is_an_import_package_at_the_root():
    packages = sorted(p.name for p in REPO.iterdir() if (p / "__init__.py").is_file())
    assert packages == ["heta_fast"], f"top-level import packages in the repository root: {packages}"


def test_an_installed_kernels_package_wins_over_the_triton_folder(tmp_path):
    # A stand-in distribution named `kernels` (what pip would install), on the path after the root.
    site = tmp_path / "site"
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text("STAND_IN = True\n")
    dist = site / "kernels-0.0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kernels\nVersion: 0.0.1\n")
    res = _python(f"import sys, kernels; assert sys.path[0] in ('', {str(REPO)!r}); "
                  "print(getattr(kernels, 'STAND_IN', False), kernels.__file__)", extra_path=site)
    assert res.returncode == 0, res.stderr
    found, where = res.stdout.split()
    assert found == "True" and Path(where).is_relative_to(site), res.stdout


def test_heta_fast_and_transformers_import_from_the_root():
    # With whatever `kernels` this environment has (transformers >= 5.25 requires Hugging Face's), or none.
    res = _python(
        "import importlib.util, heta_fast, transformers.modeling_utils\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "origin = None if spec is None else (spec.origin or '')\n"
        "print('kernels:', origin)\n"
    )
    assert res.returncode == 0, res.stderr[-3000:]
    line = res.stdout.strip().splitlines()[-1]
    # None (not installed), or an installed package; never the Triton folder (a namespace portion of
    # kernels/ has no origin and imports nothing). A virtual environment may itself sit in the checkout.
    origin = line.removeprefix("kernels: ")
    assert origin in ("None", "") or not Path(origin).resolve().is_relative_to(REPO / "kernels"), line


def test_the_triton_kernels_load_as_heta_fast_kernels():
    from heta_fast._triton import load_kernel_module

    module = load_kernel_module("attn_vecmat")
    assert module.__name__ == "heta_fast.kernels.attn_vecmat"
    assert Path(module.__file__).resolve() == REPO / "kernels" / "attn_vecmat.py"
