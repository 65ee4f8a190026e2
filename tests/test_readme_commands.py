"""Every `refine ...` command in the README parses with the real CLI, so README and CLI cannot drift apart.

Each shell command of the README's ```bash blocks is split like a shell would (continuations, comments, `&&`,
leading `VAR=value`), and its `refine` arguments are parsed by the real Typer/click command tree with every command's
callback replaced by a recorder: unknown options, wrong value types, missing arguments and removed commands all fail,
and nothing runs. Placeholders (`...`) and optional brackets (`[--ray-address auto]`) are dropped first.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"```bash\n(.*?)```", re.S)
_ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def readme_commands(text: str) -> list[list[str]]:
    """The `refine` argument lists of every shell command in the README's bash blocks."""
    commands = []
    for block in _BLOCK.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            parts: list[list[str]] = [[]]
            for token in shlex.split(line, comments=True):
                if token in ("&&", "||", ";", "|"):
                    parts.append([])
                elif token in (">", ">>", "<", "2>"):
                    parts.append([])  # a redirection: its file name is no argument (the group is dropped)
                    parts.append([])
                else:
                    parts[-1].append(token)
            for words in parts:
                while words and _ENV.match(words[0]):
                    words.pop(0)
                if not words or Path(words[0]).name != "refine":
                    continue
                args = [w.strip("[]") for w in words[1:] if w.strip("[]") and w != "..."]
                commands.append(args)
    return commands


def _cli_with_recorders() -> tuple[object, list[tuple[str, dict]]]:
    import typer.main

    from refine.cli.app import app

    calls: list[tuple[str, dict]] = []
    root = typer.main.get_command(app)

    def patch(group: object, path: str) -> None:
        for name, cmd in getattr(group, "commands", {}).items():
            if getattr(cmd, "commands", None):
                patch(cmd, f"{path} {name}")
            else:
                cmd.callback = lambda _name=f"{path} {name}", **kw: calls.append((_name, kw))

    patch(root, "refine")
    return root, calls


def test_the_readme_has_many_refine_commands():
    commands = readme_commands(README.read_text())
    assert len(commands) >= 15, commands
    assert {c[0] for c in commands} >= {"synth", "eval", "optimize", "distill", "export", "quickstart", "lm"}


@pytest.mark.parametrize("args", readme_commands(README.read_text()), ids=lambda a: " ".join(a)[:80])
def test_readme_command_parses(args):
    root, calls = _cli_with_recorders()
    try:
        root.main(args, prog_name="refine", standalone_mode=False)
    except Exception as exc:  # the message names the bad option: show it with the README line
        raise AssertionError(f"README command `refine {' '.join(args)}` does not parse: {exc}") from exc
    exits_early = {"--version", "--print-config", "-h", "--help"} & set(args)
    assert len(calls) == (0 if exits_early else 1), f"`refine {' '.join(args)}` ran no command"


def test_a_drifted_command_is_caught():
    root, _ = _cli_with_recorders()
    with pytest.raises(Exception, match="No such option"):
        root.main(["synth", "--no-such-flag"], prog_name="refine", standalone_mode=False)


def test_the_readme_states_the_quickstart_default_folder_the_cli_uses():
    # #17: the README said `runs/qs` while `--help` said `runs/quickstart`; the CLI and the Python config share one.
    import typer

    from refine.cli.app import app
    from refine.quickstart import QuickstartConfig

    command = typer.main.get_command(app).commands["quickstart"]
    cli_default = next(p.default for p in command.params if p.name == "out")
    assert str(cli_default) == str(QuickstartConfig().out)
    assert re.findall(r"`--out` \(default `([^`]+)`\)", README.read_text()) == [str(cli_default)]
