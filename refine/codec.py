"""The one codec of refinement data: trajectories <-> training rows, and rows <-> every external schema.

A *row* is ``{"id", "messages": [{"role", "content", "loss"?}], "provenance": {...}, "verdict_reasons": [...]}`` in
the shared chat format of `refine.formats`. Assistant messages carry ``loss``; the stored per-turn flag of the
trajectory (set once, by the program that made it) is the truth everywhere: nothing here re-derives it.

Readers: `accepted_trajectories` (the one reader of a run directory), `row_from_any` (one object of any known schema)
and `load_source` (a run directory, a file, a folder or ``hf:owner/name``). Schemas read (`detect_schema`):

* ``record``: a run record (`refine.data.RunRecord`), ``trajectory``: a bare `Trajectory`;
* ``messages``: ``messages`` of role/content (+ ``loss``; LLaMA-Factory v1 content lists and ``loss_weight`` too);
* ``agentrefine`` (fudayuan/AgentRefine-*): ``id`` + ``conversations`` of from/loss/value, no system turn;
* ``agentgym`` (AgentTraj-L): ``item_id`` + ``conversations``, ``loss`` null/false/true, instruction + "Ok." first;
* ``agentinstruct`` (AgentTuning): ``id`` + ``conversations`` of from/value (``loss`` optional);
* ``agentflan`` (Agent-FLAN): ``id`` + ``conversation`` of role/content/loss;
* ``sharegpt``: ``conversations`` without an id.

Writers of the export formats (`write_rows`) live in `refine.export`; the per-row conversions they use are here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from refine.chat_templates import TRL_TEMPLATES
from refine.data import RunRecord, Trajectory, content_id
from refine.errors import ExportError
from refine.formats import format_assistant, format_first_user, format_system

__all__ = [
    "SCHEMAS",
    "TRL_TEMPLATES",
    "accepted_trajectories",
    "agentgym_to_messages",
    "detect_schema",
    "load_source",
    "messages_to_agentgym",
    "messages_to_llamafactory",
    "messages_to_sharegpt",
    "provenance_from_hf",
    "provenance_to_hf",
    "row_from_any",
    "sharegpt_to_messages",
    "trajectory_to_messages",
    "trajectory_to_row",
]

SCHEMAS: tuple[str, ...] = (
    "record",
    "trajectory",
    "messages",
    "agentrefine",
    "agentgym",
    "agentinstruct",
    "agentflan",
    "sharegpt",
)

_TO_SHAREGPT = {"system": "system", "user": "human", "assistant": "gpt"}
# Speakers of the published sets (AgentTuning, AgentGym, AgentRefine, FastChat, LLaMA-Factory sharegpt).
_FROM_SHAREGPT = {
    "system": "system",
    "human": "user",
    "user": "user",
    "observation": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
}


# ----------------------------------------------------------------------------------------------- trajectories
def trajectory_to_messages(traj: Trajectory) -> list[dict[str, Any]]:
    """A trajectory as chat messages in the shared format, ``loss`` on assistant turns from the stored flag.

    The first user message holds the task and the environment as the first observation; each DM observation is a
    user message (``Observation: ...``); DM turns after the last player turn are dropped (nothing follows to train).

    Example:
        >>> from refine.data import Script, Turn
        >>> t = Trajectory(script=Script(environment="A room.", tasks=["leave"], actions=[]), turns=[
        ...     Turn(role="player", thought="t", action="go window", loss=False),
        ...     Turn(role="dm", observation="No.", logic_error=True),
        ...     Turn(role="player", thought="t2", action="go door"),
        ...     Turn(role="dm", observation="Out.", task_completed=True)])
        >>> [(m["role"], m.get("loss")) for m in trajectory_to_messages(t)]
        [('system', None), ('user', None), ('assistant', False), ('user', None), ('assistant', True)]
    """
    script = traj.script
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": format_system(script.environment, script.describe_actions())},
        {"role": "user", "content": format_first_user(script.goal, script.environment)},
    ]
    last_player = max((i for i, u in enumerate(traj.turns) if u.role == "player"), default=-1)
    for turn in traj.turns[: last_player + 1]:
        if turn.role == "player":
            content = format_assistant(turn.thought, turn.action or "")
            msgs.append({"role": "assistant", "content": content, "loss": bool(turn.loss)})
        elif turn.observation is not None:
            msgs.append({"role": "user", "content": f"Observation: {turn.observation.strip()}"})
    return msgs


def trajectory_to_row(traj: Trajectory | Mapping[str, Any]) -> dict[str, Any]:
    """One training row: ``{"id", "messages", "provenance", "verdict_reasons"}`` (the columns of every export)."""
    t = traj if isinstance(traj, Trajectory) else Trajectory.model_validate(traj)
    return {
        "id": t.id,
        "messages": trajectory_to_messages(t),
        "provenance": t.provenance.model_dump(mode="json"),
        "verdict_reasons": list(t.verdict.reasons) if t.verdict else [],
    }


def accepted_trajectories(run_dir: str | Path) -> list[Trajectory]:
    """The accepted trajectories of a run directory, each record validated as a `RunRecord`.

    Raises:
        ExportError: not a run directory, or a record that is not a run record (naming the line's key).
    """
    from refine.errors import RunStoreError
    from refine.store import RunStore

    run = Path(run_dir)
    try:
        store = RunStore.open_existing(run)
    except RunStoreError as exc:
        raise ExportError(str(exc)) from None
    out = []
    for i, rec in enumerate(store.records("accepted")):
        try:
            record = RunRecord.model_validate(rec)
        except ValueError as exc:
            first = str(exc).splitlines()[1:3]
            raise ExportError(
                f"{run}/accepted.jsonl record {i} (key {rec.get('key')!r}) is not a run record "
                f"({'; '.join(s.strip() for s in first)}); was the file overwritten by another tool?"
            ) from None
        out.append(record.trajectory)
    return out


# ------------------------------------------------------------------------------------------ row conversions
def messages_to_sharegpt(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages -> ShareGPT ``conversations`` (``loss`` on every turn, false off ``gpt``: AgentTuning style)."""
    conv = []
    for m in messages:
        role = _TO_SHAREGPT.get(m["role"])
        if role is None:
            raise ExportError(f"Cannot export a message with role {m['role']!r} to ShareGPT (system/user/assistant).")
        conv.append({"from": role, "value": m["content"], "loss": _trained(m) if role == "gpt" else False})
    return conv


def sharegpt_to_messages(conversations: Iterable[Mapping[str, Any]], where: str = "row") -> list[dict[str, Any]]:
    """ShareGPT-style ``conversations`` (from/value/loss) -> chat messages; a gpt turn's null loss means trained."""
    msgs = []
    for c in conversations:
        speaker = str(c.get("from", "")).lower()
        role = _FROM_SHAREGPT.get(speaker)
        if role is None:
            raise ExportError(
                f"{where}: unknown ShareGPT speaker {c.get('from')!r}; expected one of {', '.join(_FROM_SHAREGPT)}"
            )
        msg: dict[str, Any] = {"role": role, "content": _text(c.get("value"), where)}
        if role == "assistant":
            msg["loss"] = c.get("loss") is not False
        msgs.append(msg)
    return msgs


def messages_to_agentgym(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages -> AgentGym/AgentTuning ``conversations``: system folded into the first human turn, loss null on
    human turns and a bool on gpt turns (the trainers of both projects train exactly the ``loss: true`` turns)."""
    msgs = [dict(m) for m in messages]
    if msgs and msgs[0]["role"] == "system":
        system = msgs.pop(0)["content"]
        if msgs and msgs[0]["role"] == "user":
            msgs[0]["content"] = f"{system}\n\n{msgs[0]['content']}"
        else:
            msgs.insert(0, {"role": "user", "content": system})
    return [
        {
            "from": _TO_SHAREGPT[m["role"]],
            "loss": _trained(m) if m["role"] == "assistant" else None,
            "value": m["content"],
        }
        for m in msgs
    ]


def agentgym_to_messages(conversations: Iterable[Mapping[str, Any]], where: str = "row") -> list[dict[str, Any]]:
    """AgentGym/AgentInstruct/AgentRefine ``conversations`` -> messages (the instruction + "Ok." exchange is kept:
    its "Ok." turn has ``loss: false`` and stays masked)."""
    return sharegpt_to_messages(conversations, where)


def messages_to_llamafactory(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages -> LLaMA-Factory v1 native messages: content parts and a per-message ``loss_weight`` (0.0 masks)."""
    return [
        {
            "role": m["role"],
            "content": [{"type": "text", "value": m["content"]}],
            "loss_weight": 1.0 if m["role"] == "assistant" and _trained(m) else 0.0,
        }
        for m in messages
    ]


def _trained(m: Mapping[str, Any]) -> bool:
    return m.get("loss") is not False


def _text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # LLaMA-Factory v1 / OpenAI content parts
        parts = [p.get("value", p.get("text")) for p in value if isinstance(p, Mapping)]
        if all(isinstance(p, str) for p in parts):
            return "".join(parts)
    raise ExportError(f"{where}: a message has no text content ({type(value).__name__}); every turn needs a string")


def provenance_to_hf(p: Mapping[str, Any]) -> dict[str, Any]:
    """Provenance for Arrow (one schema for all rows): the per-model dicts become lists of records."""
    return {
        "persona": p.get("persona", ""),
        "seed": p.get("seed"),
        "program_hash": p.get("program_hash", ""),
        "created_at": p.get("created_at", ""),
        "models": [{"role": k, "model": v} for k, v in (p.get("models") or {}).items()],
        "usage": [
            {
                "model": m,
                "prompt_tokens": int(u.get("prompt_tokens", 0)),
                "completion_tokens": int(u.get("completion_tokens", 0)),
                "calls": int(u.get("calls", 0)),
            }
            for m, u in (p.get("usage") or {}).items()
        ],
    }


def provenance_from_hf(p: Mapping[str, Any] | None) -> dict[str, Any]:
    """Inverse of `provenance_to_hf`; a provenance that already holds dicts is returned as a plain dict."""
    p = dict(p or {})
    models, usage = p.get("models"), p.get("usage")
    if isinstance(models, list):
        p["models"] = {m["role"]: m["model"] for m in models if isinstance(m, Mapping)}
    if isinstance(usage, list):
        p["usage"] = {
            u["model"]: {k: u[k] for k in ("prompt_tokens", "completion_tokens", "calls") if u.get(k) is not None}
            for u in usage
            if isinstance(u, Mapping)
        }
    return {k: v for k, v in p.items() if v is not None or k == "seed"}


# ------------------------------------------------------------------------------------------------ schemas
def detect_schema(obj: Mapping[str, Any]) -> str:
    """Which known schema one object follows (see the module docstring); raises `ExportError` when none."""
    if isinstance(obj.get("trajectory"), Mapping) and "accepted" in obj:
        return "record"
    if "script" in obj and "turns" in obj:
        return "trajectory"
    if isinstance(obj.get("messages"), list):
        return "messages"
    if isinstance(obj.get("conversation"), list):
        return "agentflan"
    conv = obj.get("conversations")
    if isinstance(conv, list):
        if "item_id" in obj:
            return "agentgym"
        if "id" in obj:
            has_loss = any(isinstance(c, Mapping) and "loss" in c for c in conv)
            return "agentrefine" if has_loss else "agentinstruct"
        return "sharegpt"
    keys = ", ".join(sorted(obj)[:8]) or "none"
    raise ExportError(
        f"unknown row schema (keys: {keys}); expected a run record, a trajectory, 'messages', 'conversations' "
        "(AgentRefine/AgentGym/AgentInstruct/ShareGPT) or 'conversation' (Agent-FLAN)"
    )


def row_from_any(obj: Mapping[str, Any], where: str = "row") -> dict[str, Any]:
    """One object of any known schema -> a training row with its masks (``loss`` on assistant turns)."""
    if not isinstance(obj, Mapping):
        raise ExportError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    schema = detect_schema(obj)
    try:
        if schema == "record":
            return trajectory_to_row(RunRecord.model_validate(obj).trajectory)
        if schema == "trajectory":
            return trajectory_to_row(Trajectory.model_validate(obj))
    except ValueError as exc:
        raise ExportError(f"{where}: not a valid {schema} ({str(exc).splitlines()[0]})") from None
    if schema == "messages":
        msgs = [_message(m, where) for m in obj["messages"]]
    elif schema == "agentflan":
        msgs = [_message(m, where) for m in obj["conversation"]]
    else:
        msgs = sharegpt_to_messages(obj["conversations"], where)
    if not msgs:
        raise ExportError(f"{where}: the conversation is empty")
    rid = obj.get("id", obj.get("item_id"))
    reasons = obj.get("verdict_reasons") or []
    return {
        "id": str(rid) if rid is not None else content_id(msgs),
        "messages": msgs,
        "provenance": provenance_from_hf(obj.get("provenance") if isinstance(obj.get("provenance"), Mapping) else {}),
        "verdict_reasons": list(reasons) if isinstance(reasons, list) else [],
    }


def _message(m: Any, where: str) -> dict[str, Any]:
    if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
        raise ExportError(f"{where}: every message needs 'role' and 'content', got {m!r:.80}")
    role = _FROM_SHAREGPT.get(str(m["role"]).lower(), m["role"])
    msg: dict[str, Any] = {"role": role, "content": _text(m["content"], where)}
    if role == "assistant":
        if m.get("loss_weight") is not None:
            msg["loss"] = float(m["loss_weight"]) > 0
        else:
            msg["loss"] = m.get("loss") is not False
    return msg


# ------------------------------------------------------------------------------------------------ sources
def load_source(source: str | Path) -> tuple[list[dict[str, Any]], str]:
    """Rows of a run directory, a JSONL/JSON/Parquet file, a folder of them, a `datasets` folder, or ``hf:owner/name``.

    Returns:
        ``(rows, schema)``: the rows with their masks and the schema detected on the first row.

    Raises:
        ExportError: one line naming the source and the fix (missing, empty, unknown schema, offline hub).
    """
    text = str(source)
    if text.startswith("hf:"):
        objs: Iterable[Any] = _from_hub(text[3:])
        return _rows(objs, text)
    path = Path(source)
    if not path.exists():
        raise ExportError(f"training data {path} does not exist; pass a run directory or an exported dataset")
    if path.is_dir():
        if (path / "manifest.json").exists():
            rows = [trajectory_to_row(t) for t in accepted_trajectories(path)]
            if not rows:
                raise ExportError(f"run {path} has no accepted trajectory (see its rejected.jsonl for the reasons)")
            return rows, "record"
        if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            return _rows(_from_disk(path), str(path))
        files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json", ".parquet") and p.is_file())
        files = [p for p in files if p.name not in ("dataset_info.json", "state.json")]
        if not files:
            raise ExportError(
                f"{path} is neither a run directory (manifest.json), a datasets folder nor holds .jsonl/.json files"
            )
        return _rows((o for f in files for o in _read_file(f)), str(path))
    return _rows(_read_file(path), str(path))


def _rows(objs: Iterable[tuple[str, Any]] | Iterable[Any], where: str) -> tuple[list[dict[str, Any]], str]:
    rows, schema = [], ""
    for n, item in enumerate(objs):
        loc, obj = item if isinstance(item, tuple) else (f"{where}[{n}]", item)
        if not schema and isinstance(obj, Mapping):
            schema = detect_schema(obj)
        rows.append(row_from_any(obj, loc))
    if not rows:
        raise ExportError(f"{where} holds no training rows (an empty file or no accepted trajectories?)")
    return rows, schema


def _read_file(path: Path) -> Iterator[tuple[str, Any]]:
    if path.stat().st_size == 0:
        raise ExportError(f"{path} is empty (0 bytes); re-export it (an interrupted export?)")
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield f"{path}:{n}", json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ExportError(f"{path}:{n} is not valid JSON ({exc.msg})") from None
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ExportError(f"{path} is not valid JSON ({exc.msg})") from None
        if isinstance(data, Mapping):
            data = [data]
        if not isinstance(data, list):
            raise ExportError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
        for n, obj in enumerate(data):
            yield f"{path}[{n}]", obj
    elif path.suffix == ".parquet":
        import datasets

        ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
        for n, obj in enumerate(ds):
            yield f"{path}[{n}]", obj
    else:
        raise ExportError(f"{path}: unknown data format; use .jsonl, .json, .parquet, a datasets folder or a run dir")


def _from_disk(path: Path) -> Iterator[Any]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise ExportError(f"{path} is not a loadable datasets folder ({exc}); re-export it") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    yield from ds


def _from_hub(spec: str) -> Iterator[Any]:
    import os

    name, _, split = spec.partition(":")
    if name.count("/") != 1 or not all(name.split("/")):
        raise ExportError(
            f"hf:{spec} is not a hub dataset id; write hf:owner/name (e.g. hf:fudayuan/AgentRefine-deepseek-4000)"
        )
    offline = any(
        os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )
    fix = f"download it where you are online (datasets.load_dataset({name!r}).save_to_disk(DIR)) and pass DIR"
    if offline:
        raise ExportError(f"hf:{name} needs the Hugging Face Hub, but HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set; {fix}")
    try:
        import datasets

        ds = datasets.load_dataset(name, split=split or "train")
    except ImportError:
        raise ExportError("hf: sources need `datasets`: pip install 'dspy-refine[train]'") from None
    except Exception as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise ExportError(f"cannot load hf:{name} from the Hugging Face Hub ({first}); {fix}") from None
    yield from ds
