"""The documentation site builds in strict mode, with every tutorial executed (at its small size).

``sphinx-build -W --keep-going`` turns every warning (a broken reference, a docstring that is not valid
reStructuredText, a page outside the table of contents) into a failure, and sphinx-gallery fails the build when
a tutorial raises. The sources are copied to a temporary directory first, so that sphinx-gallery's generated
pages do not land in the working tree.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx", reason="the documentation extra is not installed: pip install -e '.[docs]'")

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ("_build", "auto_examples", "sg_execution_times.rst", "__pycache__")

# a line each tutorial prints (its executed output must be on its page)
PRINTED = {
    "tutorial_01_synthetic": "MMD^2 DDC-HM",
    "tutorial_02_yaml_cli": "$ wakesleep train --config counts.yaml",
    "tutorial_03_own_module": "cosine between the two gradients",
    "tutorial_05_sbn_compare": "AIS NLL",
    "tutorial_06_diagnostics": "gradient cosine per layer",
}


def _text(path: Path) -> str:
    """The visible text of an HTML page (tags removed, entities decoded)."""
    return html.unescape(re.sub(r"<[^>]+>", "", path.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("docs_src")
    for name in ("README.md", "CHANGELOG.md"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "docs", src / "docs", ignore=shutil.ignore_patterns(*GENERATED))
    shutil.copytree(ROOT / "examples", src / "examples", ignore=shutil.ignore_patterns(*GENERATED))
    out = src / "html"
    env = {**os.environ, "WAKESLEEP_TUTORIAL_SMALL": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(src / "docs"), str(out)]
    done = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, f"sphinx-build failed:\n{done.stdout[-5000:]}\n{done.stderr[-8000:]}"
    return out


def test_front_page_and_getting_started(site: Path) -> None:
    front = _text(site / "index.html")
    assert "Distributed Distributional" in front and "Tutorials" in front
    # the getting-started page says the README's two commands, word for word
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Two commands", 1)[1].split("## Command line", 1)[0]
    commands = re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)
    assert len(commands) == 2
    page = _text(site / "getting_started.html")
    for command in commands:
        assert command.strip() in page


def test_user_guide_and_results(site: Path) -> None:
    for page in ("ddc_hm", "baselines", "al_ws", "eval", "data", "distributed", "DESIGN", "RESULTS"):
        assert (site / f"{page}.html").exists(), page
    for page in ("models", "choosing", "cli", "configs", "gpu"):
        assert (site / "guide" / f"{page}.html").exists(), page
    assert "How to add" in _text(site / "DESIGN.html")
    assert (site / "_images" / "mmd_hist.png").exists()  # RESULTS.md's figure was copied


def test_api_reference(site: Path) -> None:
    modules = ["wakesleep", "spec", "runs", "models", "families", "algorithms", "eval", "training", "data"]
    for name in [*modules, "experiments"]:
        assert (site / "api" / f"{name}.html").exists(), name
    # autodoc rendered the numpydoc sections of the docstrings
    evaluation = _text(site / "api" / "eval.html")
    assert "relative_mmd_test" in evaluation and "Parameters" in evaluation and "Returns" in evaluation
    assert "RunSpec" in _text(site / "api" / "spec.html")
    algorithms = _text(site / "api" / "algorithms.html")
    assert "DDCHelmholtzMachine" in algorithms and "sleep_samples" in algorithms  # an options table


def test_every_tutorial_executed(site: Path) -> None:
    tutorials = sorted(p.stem for p in (ROOT / "examples").glob("tutorial_*.py"))
    assert set(PRINTED) <= set(tutorials)
    gallery_links = (site / "auto_examples" / "index.html").read_text(encoding="utf-8")
    for name in tutorials:
        page = site / "auto_examples" / f"{name}.html"
        assert page.exists(), name
        raw = page.read_text(encoding="utf-8")
        assert "sphx-glr-script-out" in raw, f"{name}: no executed output on its page"
        assert "Traceback" not in raw, name
        if name in PRINTED:
            assert PRINTED[name] in _text(page), f"{name}: its printed output is missing"
        assert f"{name}.html" in gallery_links, f"{name} is not in the gallery"
