"""`refine.imports`: one parser and one error message for every `package.module:attr` option."""

from __future__ import annotations

import fractions
import json
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from refine.errors import ConfigError
from refine.imports import import_object, load_py_lm
from refine.testing import ScriptedLM

LM = ScriptedLM(lambda fields, inputs, messages: {}, model="fake/object")  # for `py:tests.test_imports:LM`
NOT_AN_LM = 42


def make_lm(**kwargs):
    return ScriptedLM(lambda fields, inputs, messages: {}, model="fake/factory", **kwargs)


def make_string():
    return "not an LM"


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write a uniquely named module into a folder on sys.path; returns a function (source -> module name)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def write(source: str) -> str:
        name = f"user_mod_{uuid.uuid4().hex}"
        (Path(tmp_path) / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


class TestImportObject:
    def test_imports_a_module_attribute(self):
        assert import_object("json:dumps", "serializer") is json.dumps

    def test_dotted_attribute(self):
        assert import_object("fractions:Fraction.from_float", "parser") == fractions.Fraction.from_float
        assert import_object("refine.errors:ConfigError.__mro__", "chain")[0] is ConfigError

    def test_imports_a_user_module(self, user_module):
        name = user_module("class Box:\n    class Inner:\n        VALUE = 7\n")
        assert import_object(f"{name}:Box.Inner.VALUE", "value") == 7

    @pytest.mark.parametrize("target", ["json", ":dumps", "json:", "json:.dumps", "json:a..b", ".json:dumps", "", 3])
    def test_malformed_spec(self, target):
        with pytest.raises(ConfigError, match=r"^Metric .* must look like 'package\.module:attr'\.$"):
            import_object(target, "metric")

    def test_malformed_spec_names_the_form_and_the_prefix(self):
        with pytest.raises(ConfigError, match=r"^The LM factory 'nothing' must look like 'package\.module:function'"):
            import_object("nothing", "the LM factory", form="package.module:function")
        with pytest.raises(ConfigError, match=r"^LM 'py:nothing' must look like 'py:package\.module:attr'\.$"):
            import_object("py:nothing", "LM", prefix="py:")
        with pytest.raises(ConfigError, match=r"^LM 'json:dumps' must look like 'py:package\.module:attr'\.$"):
            import_object("json:dumps", "LM", prefix="py:")  # the prefix is required
        assert import_object("py:json:dumps", "LM", prefix="py:") is json.dumps

    def test_missing_module(self):
        with pytest.raises(ConfigError) as info:
            import_object("no_such_module_xyz.sub:f", "metric")
        assert str(info.value) == (
            "Cannot import metric 'no_such_module_xyz.sub:f': ModuleNotFoundError: No module named 'no_such_module_xyz'"
        )
        assert isinstance(info.value.__cause__, ModuleNotFoundError)

    def test_missing_attribute(self):
        with pytest.raises(ConfigError) as info:
            import_object("json:nope", "metric")
        message = "Cannot import metric 'json:nope': AttributeError: module 'json' has no attribute 'nope'"
        assert str(info.value) == message
        assert isinstance(info.value.__cause__, AttributeError)
        with pytest.raises(ConfigError, match=r"'json:dumps\.nope': AttributeError: .* has no attribute 'nope'"):
            import_object("json:dumps.nope", "metric")

    def test_hint_follows_the_error(self):
        with pytest.raises(ConfigError) as info:
            import_object("json:nope", "the LM factory", hint="Is the module installed on every worker?")
        assert str(info.value).endswith("has no attribute 'nope'. Is the module installed on every worker?")

    def test_module_that_raises_on_import(self, user_module):
        name = user_module("raise RuntimeError('no GPU here')\n")
        with pytest.raises(ConfigError) as info:
            import_object(f"{name}:f", "program")
        assert str(info.value) == f"Cannot import program '{name}:f': RuntimeError: no GPU here"
        assert isinstance(info.value.__cause__, RuntimeError)

    def test_module_with_a_syntax_error(self, user_module):
        name = user_module("def f(:\n")
        with pytest.raises(ConfigError, match=rf"^Cannot import program '{name}:f': SyntaxError: "):
            import_object(f"{name}:f", "program")

    def test_error_without_text_names_its_type(self, user_module):
        name = user_module("raise KeyError\n")
        with pytest.raises(ConfigError, match=rf"^Cannot import environment '{name}:f': KeyError$"):
            import_object(f"{name}:f", "environment")


class TestLoadPyLM:
    def test_lm_object_is_returned_as_is(self):
        assert load_py_lm("py:tests.test_imports:LM") is LM

    def test_factory_gets_the_kwargs(self):
        lm = load_py_lm("py:tests.test_imports:make_lm", temperature=0.5)
        assert isinstance(lm, ScriptedLM) and lm.model == "fake/factory" and lm.kwargs["temperature"] == 0.5

    def test_bad_specs(self):
        with pytest.raises(
            ConfigError, match=r"^The LM factory 'py:nothing' must look like 'py:package\.module:factory'\.$"
        ):
            load_py_lm("py:nothing")
        with pytest.raises(ConfigError, match=r"^Cannot import the LM factory 'py:tests\.no_such_module:make'"):
            load_py_lm("py:tests.no_such_module:make")
        with pytest.raises(ConfigError, match=r"names a int, not a dspy LM or a factory of one"):
            load_py_lm("py:tests.test_imports:NOT_AN_LM")
        with pytest.raises(ConfigError, match=r"'py:tests\.test_imports:make_string' gave a str, not a dspy LM"):
            load_py_lm("py:tests.test_imports:make_string")

    def test_synth_and_optimize_share_it(self):
        from refine.optimizers.prompt_opt.run import resolve_lm as optimize_resolve_lm
        from refine.synth import resolve_lm as synth_resolve_lm

        assert synth_resolve_lm("py:tests.test_imports:LM") is LM
        assert optimize_resolve_lm("py:tests.test_imports:LM") is LM
        for resolve in (synth_resolve_lm, optimize_resolve_lm):
            with pytest.raises(ConfigError, match=r"must look like 'py:package\.module:factory'"):
                resolve("py:nothing")


def _imported_modules(path):
    """Every module a source file imports, at any level (inside functions too)."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_one_load_program_and_saved_programs_load_below_the_registry():
    """One loader everywhere; the registry never imports the optimizers, and saved-program loading imports neither."""
    from pathlib import Path

    import refine.optimizers
    import refine.programs_registry as registry
    import refine.synth
    from refine.optimizers.prompt_opt import artifacts

    assert refine.synth.load_program is registry.load_program
    assert refine.optimizers.load_optimized is artifacts.load_optimized is registry.load_optimized
    root = Path(registry.__file__).parent
    assert not {m for m in _imported_modules(root / "programs_registry.py") if m.startswith("refine.optimizers")}
    below = _imported_modules(root / "saved_program.py")
    assert not {m for m in below if m.startswith(("refine.optimizers", "refine.programs_registry", "refine.synth"))}
