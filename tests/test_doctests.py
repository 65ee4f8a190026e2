"""Every docstring example in the package runs and shows what the code really returns (docs that cannot rot)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest


def _modules() -> list[str]:
    # programs/, signatures/ and optimizers/ install as refine.programs etc. (package-dir), so an editable install
    # does not list them under refine/: walk each subpackage from its own path.
    names = {"refine"}
    for sub in ("", ".programs", ".signatures", ".optimizers"):
        package = importlib.import_module("refine" + sub)
        names.add(package.__name__)
        names.update(info.name for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."))
    return sorted(names)


MODULES = _modules()


def test_the_walk_finds_every_part_of_the_package():
    for part in ("refine.lm.kvcache", "refine.imports", "refine.programs.interactive", "refine.optimizers.metrics"):
        assert part in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(module, name) if t.examples]
    report: list[str] = []
    for test in tests:
        runner.run(test, out=report.append)
    summary = runner.summarize(verbose=False)
    assert summary.failed == 0, "".join(report)[-4000:]
