"""The package as released: a wheel and an sdist built from a copy of the tree (setuptools, no network).

The full check (``python -m build``, a clean environment, a smoke run) is in ``docs/release.md``; this one builds
both archives with the installed setuptools and reads their file lists and metadata.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import wakesleep

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "MANIFEST.in", "constraints.txt", "src"]

pytest.importorskip("setuptools", minversion="77", reason="building needs setuptools >= 77 (license expressions)")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """``{"wheel": ..., "sdist": ..., "tree": ...}`` built by setuptools' PEP 517 backend from a copy of the tree."""
    tree = tmp_path_factory.mktemp("tree")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tree / name, ignore=ignore)
        else:
            shutil.copy2(src, tree / name)
    dist = tree / "dist"
    built = {"tree": tree}
    for kind in ("sdist", "wheel"):  # one process each: setuptools keeps state between builds
        code = f"import sys; from setuptools import build_meta as b; print('BUILT', b.build_{kind}(sys.argv[1]))"
        proc = subprocess.run(
            [sys.executable, "-c", code, str(dist)], cwd=tree, capture_output=True, text=True, timeout=300
        )
        if proc.returncode != 0:
            if "No module named" in proc.stderr and ("wheel" in proc.stderr or "setuptools" in proc.stderr):
                pytest.skip(f"wheel tooling unavailable: {proc.stderr.strip().splitlines()[-1]}")
            pytest.fail(f"the {kind} build failed:\n{proc.stderr[-3000:]}")
        built[kind] = dist / next(line for line in proc.stdout.splitlines() if line.startswith("BUILT ")).split()[1]
    return built


def test_the_wheel_holds_the_package_its_data_and_licence(built):
    version = wakesleep.__version__
    assert built["wheel"].name == f"wakesleep-{version}-py3-none-any.whl"
    with zipfile.ZipFile(built["wheel"]) as whl:
        names = set(whl.namelist())
        info = f"wakesleep-{version}.dist-info"
        metadata = whl.read(f"{info}/METADATA").decode()
        entry_points = whl.read(f"{info}/entry_points.txt").decode()
    src = built["tree"] / "src"
    modules = {str(p.relative_to(src)) for p in (src / "wakesleep").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    configs = {
        f"wakesleep/experiments/configs/{p.name}" for p in (src / "wakesleep/experiments/configs").glob("*.yaml")
    }
    assert "wakesleep/experiments/configs/synthetic.yaml" in configs and configs <= names
    assert {"wakesleep/py.typed", f"{info}/licenses/LICENSE"} <= names
    assert not any(n.startswith(("tests/", "docs/", "configs/")) for n in names)
    headers = dict(line.split(": ", 1) for line in metadata.split("\n\n", 1)[0].splitlines() if ": " in line)
    assert headers["Version"] == version and headers["License-Expression"] == "MIT"
    assert headers["Author"] == "the wakesleep developers"
    assert "Provides-Extra: tensorboard" in metadata and "tensorboardX" in metadata
    assert "Classifier: Typing :: Typed" in metadata
    assert "[console_scripts]\nwakesleep = wakesleep.cli:main" in entry_points


def test_the_sdist_holds_the_sources_without_links(built):
    version = wakesleep.__version__
    top = f"wakesleep-{version}"
    with tarfile.open(built["sdist"]) as sdist:
        members = sdist.getmembers()
    names = {m.name for m in members}
    assert not [m.name for m in members if m.issym() or m.islnk()]
    for name in ("LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", "PKG-INFO"):
        assert f"{top}/{name}" in names, name
    assert f"{top}/src/wakesleep/experiments/configs/synthetic.yaml" in names
    assert f"{top}/src/wakesleep/py.typed" in names


def test_the_version_is_written_in_one_place():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'dynamic = ["version"]' in text and 'version = { attr = "wakesleep.__version__" }' in text
    assert "\nversion =" not in text.split("[tool.setuptools.dynamic]")[0]
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"({wakesleep.__version__})" in changelog.split("\n## ", 2)[1].splitlines()[0]
