"""`--config FILE` (TOML or YAML), `--set key=value` and `--print-config` for every command with a typed config.

Precedence, lowest first: the command's defaults, the config file, `--set key=value`, flags given on the command
line. A file may hold one table per command (`[synth]`, `[eval]`, ...) so one file drives every command; keys are
the option names (`max_attempts` or `max-attempts`). Unknown keys and ill-typed values fail before any work, with
the file and key named.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["configurable", "load_config_file", "to_toml"]

_OWN = ("ctx", "config_file", "print_config", "set_")


def load_config_file(path: Path) -> dict[str, Any]:
    """The mapping in a TOML (`.toml`) or YAML (`.yaml`/`.yml`) file.

    Raises:
        ConfigError: the file is missing, unparsable, or not a mapping.
    """
    from refine.errors import ConfigError

    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file.")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            data: Any = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"--config {path}: use a .toml, .yaml or .yml file.")
    except ConfigError:
        raise
    except Exception as exc:  # tomllib.TOMLDecodeError, yaml.YAMLError: both say line and column
        raise ConfigError(f"--config {path}: cannot parse it: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: the file must hold a mapping of option names to values.")
    return data


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def to_toml(values: dict[str, Any], table: str | None = None) -> str:
    """Flat `values` as TOML text (None values become comments: TOML has no null)."""
    lines = [f"[{table}]"] if table else []
    for key, value in values.items():
        lines.append(f"# {key} =  (unset)" if value is None else f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _section(data: dict[str, Any], command: str, commands: set[str]) -> dict[str, Any]:
    if isinstance(data.get(command), dict):
        return dict(data[command])
    return {k: v for k, v in data.items() if not (k in commands and isinstance(v, dict))}


def _convert(ctx: Any, param: Any, value: Any, where: str) -> Any:
    from refine.errors import ConfigError

    multiple = bool(getattr(param, "multiple", False))
    if isinstance(value, list | tuple) and not multiple and getattr(param, "nargs", 1) == 1:
        value = ",".join(str(v) for v in value)  # a list for a comma-separated option (--envs a,b)
    if multiple and not isinstance(value, list | tuple):
        value = [value]
    try:
        return param.process_value(ctx, value)
    except Exception as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        raise ConfigError(f"{where}: {param.name} = {value!r}: {message}") from None


def _names(ctx: Any) -> dict[str, Any]:
    return {p.name: p for p in ctx.command.params if p.name not in _OWN and p.expose_value}


def _aliases(params: dict[str, Any]) -> dict[str, str]:
    """Long flag names as keys too (`show_masks` for `--show-masks`, whose parameter is `show`)."""
    aliases: dict[str, str] = {}
    for name, p in params.items():
        for opt in getattr(p, "opts", ()):
            if opt.startswith("--"):
                aliases.setdefault(opt[2:].replace("-", "_"), name)
    return aliases


def _resolve(ctx: Any, config_file: Path | None, sets: list[str], given: dict[str, Any]) -> dict[str, Any]:
    from refine.errors import ConfigError

    params = _names(ctx)
    aliases = _aliases(params)
    values = dict(given)
    layers: list[tuple[str, dict[str, Any]]] = []
    if config_file is not None:
        data = load_config_file(config_file)
        root = ctx.find_root().command
        commands = set(getattr(root, "commands", {}) or {})
        layers.append((str(config_file), _section(data, ctx.info_name or "", commands)))
    overrides: dict[str, Any] = {}
    for pair in sets:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r} must look like key=value.")
        overrides[key.strip()] = raw
    layers.append(("--set", overrides))
    for where, layer in layers:
        for raw_key, value in layer.items():
            key = str(raw_key).replace("-", "_")
            key = key if key in params else aliases.get(key, key)
            if key not in params:
                near = difflib.get_close_matches(key, list(params), n=1, cutoff=0.6)
                hint = f"did you mean {near[0]!r}? " if near else ""
                raise ConfigError(
                    f"{where}: unknown key {raw_key!r} for `refine {ctx.info_name}`; {hint}keys: {', '.join(params)}."
                )
            source = ctx.get_parameter_source(key)
            if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
                continue  # a flag on the command line wins over the file and --set
            values[key] = _convert(ctx, params[key], value, where)
    return values


def _printable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_printable(v) for v in value]
    return value


def _print_config(ctx: Any, param: Any, value: bool) -> None:
    """Eager: print the defaults (with an earlier --config applied) as TOML and exit, before required arguments."""
    if not value or ctx.resilient_parsing:
        return
    defaults = {name: p.get_default(ctx) for name, p in _names(ctx).items()}
    config_file = ctx.params.get("config_file")
    resolved = _resolve(ctx, config_file, [], defaults) if config_file else defaults
    typer.echo(to_toml({k: _printable(v) for k, v in resolved.items()}, table=ctx.info_name), nl=False)
    raise typer.Exit()


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        is_eager=True,
        help="TOML or YAML file of option values (a [<command>] table or top-level keys); flags override it.",
    ),
]
PrintConfigOption = Annotated[
    bool,
    typer.Option(
        "--print-config",
        is_eager=True,
        callback=_print_config,
        help="Print this command's settings as TOML (defaults, with an earlier --config applied) and exit.",
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override one setting, key=value (repeatable); applied after --config."),
]


def configurable(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add `--config`, `--set` and `--print-config` to a Typer command function."""
    sig = inspect.signature(fn, eval_str=True)
    extra = [
        inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
        inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ConfigOption),
        inspect.Parameter("set_", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=SetOption),
        inspect.Parameter("print_config", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=PrintConfigOption),
    ]
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in sig.parameters.values()]

    @functools.wraps(fn)
    def wrapper(
        *, ctx: typer.Context, config_file: Path | None, set_: list[str] | None, print_config: bool, **given: Any
    ) -> Any:
        if config_file is None and not set_:
            return fn(**given)
        return fn(**_resolve(ctx, config_file, list(set_ or []), given))

    new_sig = sig.replace(parameters=[*params, *extra])
    wrapper.__signature__ = new_sig  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in new_sig.parameters.values()}
    return wrapper
