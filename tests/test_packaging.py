"""Packaging: the wheel holds one import namespace (`refine`) with every source file, and works from a fresh venv.

`signatures/`, `programs/` and `optimizers/` live at the repository top level but must install as `refine.signatures`,
`refine.programs` and `refine.optimizers`, never as top-level modules of those generic names.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder -> the package path it installs as
SOURCE_DIRS = {"refine": "refine", "signatures": "refine/signatures", "programs": "refine/programs",
               "optimizers": "refine/optimizers"}  # fmt: skip
GENERIC = ("signatures", "programs", "optimizers")


def _source_files() -> dict[str, Path]:
    """Every file the wheel must contain (python modules and package data), by its path inside the wheel."""
    wanted: dict[str, Path] = {}
    for src, dst in SOURCE_DIRS.items():
        for p in (ROOT / src).rglob("*"):
            if "__pycache__" in p.parts or not p.is_file():
                continue
            rel = p.relative_to(ROOT / src)
            if src == "refine" and rel.parts[0] in GENERIC:
                continue
            is_asset = p.suffix in (".jsonl", ".csv") and rel.parts[0] == "assets"
            if p.suffix == ".py" or p.name == "py.typed" or is_asset:
                wanted[f"{dst}/{rel.as_posix()}"] = p
    return wanted


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel from a copy of the sources (the shared working tree gets no build/ or egg-info litter)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", *SOURCE_DIRS):
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.exists():
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), "."],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = out.glob("dspy_refine-*.whl")
    return whl


@pytest.mark.slow
def test_wheel_has_one_namespace_and_every_source_file(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"refine"}, sorted(top)
    for generic in GENERIC:
        assert f"refine/{generic}/__init__.py" in names
    missing = sorted(set(_source_files()) - set(names))
    assert not missing, (
        f"files missing from the wheel (add their packages to [tool.setuptools] packages in pyproject.toml): {missing}"
    )
    meta = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "refine = refine.cli:main" in zipfile.ZipFile(wheel).read(meta).decode()


@pytest.mark.slow
def test_wheel_imports_from_a_fresh_venv(wheel: Path, tmp_path: Path):
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True, timeout=300
    )
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    installed = {p.name for p in site.iterdir()} - {"pip", "_distutils_hack", "distutils-precedence.pth", "setuptools"}
    assert not {g for g in GENERIC if g in installed or f"{g}.py" in installed}, sorted(installed)
    assert "refine" in installed

    # Third-party dependencies come from this venv's site-packages, put on PYTHONPATH: .pth files (and so the
    # editable finder of this checkout) are only processed for site dirs, so `refine` can only come from the wheel.
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"], "PYTHONNOUSERSITE": "1"}
    probe = """
import importlib.util, json, refine, refine.signatures, refine.programs, refine.optimizers, refine.graph
print(json.dumps({
    "files": [m.__file__ for m in (refine, refine.signatures, refine.programs, refine.optimizers)],
    "generic": [g for g in ("signatures", "programs", "optimizers") if importlib.util.find_spec(g) is not None],
}))
"""
    proc = subprocess.run([str(py), "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(f.startswith(str(site)) for f in info["files"]), info["files"]
    assert info["generic"] == []

    cli = subprocess.run(
        [str(venv / "bin" / "refine"), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert cli.returncode == 0, cli.stderr
    assert "graph" in cli.stdout


def test_editable_install_points_at_the_checkout():
    import refine.optimizers
    import refine.programs
    import refine.signatures

    assert Path(refine.__file__).resolve() == ROOT / "refine" / "__init__.py"
    assert Path(refine.signatures.__file__).resolve() == ROOT / "signatures" / "__init__.py"
    assert Path(refine.programs.__file__).resolve() == ROOT / "programs" / "__init__.py"
    assert Path(refine.optimizers.__file__).resolve() == ROOT / "optimizers" / "__init__.py"
    assert refine.__version__ == "0.1.0"
