"""Run directories: a manifest plus append-only JSONL records keyed by stable ids, so killed runs resume exactly.

Layout of a run directory::

    manifest.json          config (secrets redacted), package versions, program hash, start/end, totals
    <kind>.jsonl           one JSON record per line (e.g. accepted.jsonl, rejected.jsonl, episodes.jsonl)
    <kind>.<shard>.jsonl   the same, written by one worker of a multi-process run (merged on read)
    lm_cache/              DSPy's content-hashed LM cache for this run (optional)

Each record is written with a single `write()` of one complete line on an O_APPEND descriptor, then fsync'ed, so a
killed process leaves at most one torn final line; it is dropped (and truncated away) when the run is reopened.
Every record carries a `key`; a key that is already present is never written again, so a resumed run neither loses
nor duplicates work.

A folder is a run only if its manifest says so: a store is never opened on a non-empty folder without one, and only
the files the manifest lists (plus worker shards) are read or repaired, so no user file is touched. Writes never
raise on odd text: lone surrogates become U+FFFD, strings longer than `MAX_FIELD_CHARS` are cut (the record says
which), and secrets (environment values, `api_key`-like config values, `register_secret`) are scrubbed.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import threading
from collections.abc import Collection, Iterator, Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from refine.data import jsonable, storable_text
from refine.errors import RunFailedError, RunStoreError
from refine.redaction import redact, register_config_secrets, register_secret, scrub_secrets, secret_values

__all__ = [
    "MAX_FIELD_CHARS",
    "RunStore",
    "ShardStore",
    "package_versions",
    "redact",
    "register_secret",
    "scrub_secrets",
]

_VERSIONED = ("dspy-refine", "dspy", "litellm", "transformers", "torch", "trl", "peft", "datasets", "llguidance")
# Which config keys a resume may change is the caller's knowledge (its options): `RunStore(resume_ignores=...)`,
# e.g. SynthConfig.RESUME_IGNORES and EvalConfig.RESUME_IGNORES. By default every key must match.

MAX_FIELD_CHARS = 200_000
"""Longest string a record field may hold; longer ones are cut and listed in the record's `truncated` field."""
_MAX_RECORD_BYTES = 32 * 2**20
# Files of a run directory that are no user's data: a killed start may leave these before its manifest.
_RUN_ONLY = re.compile(r"^(\.lock(\..+)?|\.manifest\..*\.tmp|lm_cache)$")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _cap_strings(obj: Any, limit: int, path: str, cut: list[str]) -> Any:
    if isinstance(obj, str):
        if len(obj) > limit:
            cut.append(path or "$")
            return obj[:limit] + f"...[cut {len(obj) - limit} characters]"
        return obj
    if isinstance(obj, Mapping):
        return {k: _cap_strings(v, limit, f"{path}.{k}" if path else str(k), cut) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_cap_strings(v, limit, f"{path}[{i}]", cut) for i, v in enumerate(obj)]
    return obj


def _normalize_config(config: Any, secrets: list[str]) -> dict[str, Any]:
    """The config exactly as the manifest stores it (redacted, scrubbed, JSON-typed), so resume compares like with like.

    Without this a tuple, a Path or a value equal to a secret env var would differ from its stored JSON form and
    every resume would fail with a spurious config mismatch.
    """
    if config is None:
        return {}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    config = jsonable(config)
    if not isinstance(config, Mapping):
        raise RunStoreError(
            f"RunStore config must be a dict, a dataclass or a pydantic model, got {type(config).__name__}."
        )
    register_config_secrets(config)
    text = storable_text(json.dumps(redact(dict(config)), default=str, ensure_ascii=False))
    normalized: dict[str, Any] = json.loads(scrub_secrets(text, secrets))
    return normalized


class RunStore:
    """An append-only, resumable run directory.

    A resume (`resume=True` on a folder that holds a run) must bring the same `config`, except the keys listed in
    `resume_ignores`: the caller's settings of how hard to try (workers, timeouts), not of what to make.

    Example:
        >>> import tempfile
        >>> store = RunStore(tempfile.mkdtemp() + "/run", config={"n": 2})
        >>> store.append("accepted", {"text": "hi"}, key="a1")
        True
        >>> store.append("accepted", {"text": "hi again"}, key="a1")  # already there: not written twice
        False
        >>> [r["text"] for r in store.records("accepted")]
        ['hi']
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        config: Mapping[str, Any] | Any = None,
        *,
        resume: bool = False,
        program_hash: str = "",
        shard: str | None = None,
        lock: bool = True,
        max_field_chars: int = MAX_FIELD_CHARS,
        resume_ignores: Collection[str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.max_field_chars = max_field_chars
        self._listed: set[str] | None = None  # files the manifest lists (None: a run written before the list)
        self.shard = shard
        self._lock = threading.Lock()
        self._secrets = secret_values()
        self._keys: set[str] = set()
        self._offsets: dict[Path, int] = {}  # bytes of each file already indexed (complete lines only)
        self._fds: dict[str, int] = {}
        config = _normalize_config(config, self._secrets)
        exists = (self.path / "manifest.json").exists()
        if exists and not resume and shard is None:
            raise RunStoreError(
                f"Run directory {self.path} already holds a run. Pass --resume (resume=True) to continue it, "
                "or choose another --out directory."
            )
        self._check_new_folder(exists)
        self._lockfile = None
        if lock:
            name = f".lock.{shard}" if shard else ".lock"
            try:
                self._lockfile = open(self.path / name, "w")  # held for the store's lifetime
            except OSError as exc:
                raise RunStoreError(
                    f"Cannot write to the run directory {self.path} ({exc.strerror or exc}); pick a writable --out."
                ) from None
            try:
                fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lockfile.close()
                raise RunStoreError(
                    f"Run directory {self.path} is in use by another process; wait for it or pick another --out."
                ) from None
        if exists:
            manifest = self.manifest
            ignored = tuple(resume_ignores or ())
            old = {k: v for k, v in manifest.get("config", {}).items() if k not in ignored}
            new = {k: v for k, v in config.items() if k not in ignored}
            if config and old != new:
                diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise RunStoreError(
                    f"Cannot resume {self.path}: its config differs in {diff}. Resume with the same settings, "
                    "or start a new run in another --out directory."
                )
            if program_hash and manifest.get("program_hash") and manifest["program_hash"] != program_hash:
                raise RunStoreError(
                    f"Cannot resume {self.path}: the program changed (hash {manifest['program_hash']} -> "
                    f"{program_hash}). Resume with the same program, or start a new run."
                )
            listed = manifest.get("files")
            self._listed = set(listed) if isinstance(listed, list) else None
            self._repair_and_index()
            if shard is None:
                self.update_manifest(status="running", resumed_at=_now())
        else:
            self._listed = set()
            self._write_manifest(
                {
                    "config": config,
                    "versions": package_versions(),
                    "program_hash": program_hash,
                    "started_at": _now(),
                    "ended_at": None,
                    "status": "running",
                    "files": [],
                }
            )

    def _check_new_folder(self, exists: bool) -> None:
        """Refuse a path that is a file, a folder with someone's files but no manifest, or an unwritable place."""
        if self.path.exists() and not self.path.is_dir():
            raise RunStoreError(f"--out {self.path} is a file, not a folder; pass a new or empty folder.")
        if not exists and self.shard is None and self.path.is_dir():
            try:
                foreign = sorted(p.name for p in self.path.iterdir() if not _RUN_ONLY.match(p.name))
            except OSError as exc:
                raise RunStoreError(f"Cannot read the folder {self.path} ({exc.strerror or exc}).") from None
            if foreign:
                shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
                raise RunStoreError(
                    f"{self.path} is not empty ({shown}) and holds no run (no manifest.json); refine writes a run "
                    "only into a new or empty folder, so none of your files is touched. Pick another --out."
                )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunStoreError(
                f"Cannot create the run directory {self.path} ({exc.strerror or exc}); pick a writable --out."
            ) from None

    # ------------------------------------------------------------------ manifest
    @property
    def manifest(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RunStoreError(
                f"Manifest {self.path / 'manifest.json'} is unreadable ({exc}); the run directory is corrupt."
            ) from exc

    def _write_manifest(self, data: Mapping[str, Any]) -> None:
        tmp = self.path / f".manifest.{os.getpid()}.{threading.get_ident()}.tmp"
        text = scrub_secrets(json.dumps(redact(dict(data)), indent=2, default=str, ensure_ascii=False), self._secrets)
        with open(tmp, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / "manifest.json")

    def update_manifest(self, **fields: Any) -> None:
        """Merge fields into the manifest (atomic replace)."""
        with self._lock:
            self._update_manifest_locked(fields)

    def _update_manifest_locked(self, fields: Mapping[str, Any]) -> None:
        data = self.manifest
        data.update({k: jsonable(v) for k, v in fields.items()})
        if self._listed is not None and self.shard is None:
            data["files"] = sorted(self._listed)  # a resume of an older run starts the list with what it writes
        self._write_manifest(data)

    def finish(self, **totals: Any) -> None:
        self.update_manifest(status="finished", ended_at=_now(), **totals)

    # ------------------------------------------------------------------ records
    def _is_run_file(self, name: str) -> bool:
        """A record file of this run: listed in the manifest, or a worker's shard `<kind>.<shard>.jsonl`."""
        parts = name.split(".")
        if self._listed is None:  # a run from before the manifest listed its files
            return len(parts) in (2, 3) and parts[0].isidentifier()
        return name in self._listed or (len(parts) == 3 and parts[0].isidentifier() and parts[1].isidentifier())

    def _files(self, kind: str | None = None) -> list[Path]:
        pattern = f"{kind}*.jsonl" if kind else "*.jsonl"
        return sorted(
            p
            for p in self.path.glob(pattern)
            if (kind is None or p.name.split(".")[0] == kind) and self._is_run_file(p.name)
        )

    def _repair_and_index(self) -> None:
        self._read_new()
        for p, end in self._offsets.items():
            if self.shard:
                own = p.name.endswith(f".{self.shard}.jsonl")
            else:
                own = p.name in self._listed if self._listed is not None else p.name.count(".") == 1
            if own and p.stat().st_size > end:
                # A torn last line (a crash mid-write): cut it. Only the file this store owns is truncated: another
                # shard's writer may still be appending.
                with open(p, "r+b") as f:
                    f.truncate(end)
                    f.flush()
                    os.fsync(f.fileno())

    def _read_new(self) -> None:
        """Index the complete lines appended to each file since the last read (a torn last line waits for later)."""
        for p in self._files():
            end = self._offsets.get(p, 0)
            for end_of_line, rec in self._scan(p, end):
                end = end_of_line
                if isinstance(rec, dict) and "key" in rec:
                    self._keys.add(rec["key"])
            self._offsets[p] = end

    @staticmethod
    def _scan(p: Path, start: int = 0) -> Iterator[tuple[int, Any]]:
        """`(offset after the line, decoded record or None)` for each complete line of `p` from byte `start`."""
        with open(p, "rb") as f:
            f.seek(start)
            for line in f:
                if not line.endswith(b"\n"):
                    break  # torn by a crash, or being written by another worker: read it once complete
                start += len(line)
                try:
                    yield start, json.loads(line)
                except json.JSONDecodeError:
                    yield start, None

    @classmethod
    def _iter_file(cls, p: Path) -> Iterator[dict[str, Any]]:
        return (rec for _, rec in cls._scan(p) if rec is not None)

    def has(self, key: str) -> bool:
        return key in self._keys

    def keys(self) -> set[str]:
        return set(self._keys)

    def refresh(self) -> None:
        """Pick up keys written by other processes (shards) since the last read; only the new bytes are read."""
        with self._lock:
            if self.shard is not None and self._listed is not None:  # the main store may have listed new files
                listed = self.manifest.get("files")
                if isinstance(listed, list):
                    self._listed = set(listed)
            self._read_new()

    def _line(self, kind: str, rec: dict[str, Any]) -> bytes:
        """The record as one JSON line that always encodes: surrogates replaced, long strings cut, secrets out."""
        line = json.dumps(rec, ensure_ascii=False, default=str)
        if len(line) > self.max_field_chars:
            cut: list[str] = []
            capped = _cap_strings(rec, self.max_field_chars, "", cut)
            if cut:
                capped["truncated"] = cut
                line = json.dumps(capped, ensure_ascii=False, default=str)
        line = scrub_secrets(line, self._secrets)
        try:
            data = (line + "\n").encode()
        except UnicodeEncodeError:  # a lone surrogate (e.g. from an LM reply): unencodable, so replace it
            data = (storable_text(line) + "\n").encode()
        if len(data) > _MAX_RECORD_BYTES:  # many fields under the cap: keep the key and say what happened
            stub = {"key": rec["key"], "error": f"record of {len(data):,} bytes dropped (limit {_MAX_RECORD_BYTES:,})"}
            stub.update({k: rec[k] for k in ("accepted", "index", "seed") if k in rec})
            data = (json.dumps(stub, ensure_ascii=False) + "\n").encode()
        return data

    def append(self, kind: str, record: Mapping[str, Any] | Any, key: str) -> bool:
        """Append one record to `<kind>.jsonl` unless `key` is already in the run. Returns True when written."""
        if not kind.isidentifier():
            raise RunStoreError(f"Record kind {kind!r} must be an identifier (it names the file {kind}.jsonl).")
        body = dict(jsonable(record)) if not isinstance(record, Mapping) else dict(record)
        if body.get("key", key) != key:
            raise RunStoreError(
                f"Record for {kind}.jsonl has its own 'key' field {body['key']!r} that differs from key={key!r}; "
                "the store indexes records by that field. Rename the record's field or pass key=record['key']."
            )
        rec = {"key": key, **body}
        data = self._line(kind, rec)
        with self._lock:
            if key in self._keys:
                return False
            fd = self._fds.get(kind)
            if fd is None:
                name = f"{kind}.{self.shard}.jsonl" if self.shard else f"{kind}.jsonl"
                if self._listed is not None and self.shard is None and name not in self._listed:
                    # Listed before its first byte: a resume repairs (truncates) only files the manifest lists.
                    self._listed.add(name)
                    self._update_manifest_locked({})
                fd = os.open(self.path / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                self._fds[kind] = fd
            size = os.fstat(fd).st_size
            written = os.write(fd, data)
            if written != len(data):
                # Cut the partial line so the next record does not glue onto it (both would be lost on read).
                os.ftruncate(fd, size)
                raise RunStoreError(
                    f"Short write to {self.path}/{kind}.jsonl ({written}/{len(data)} bytes); is the disk full?"
                )
            os.fsync(fd)
            self._keys.add(key)
            return True

    def records(self, kind: str | None = None) -> Iterator[dict[str, Any]]:
        """All records of a kind (every kind when None), shards merged, first occurrence of each key only."""
        seen: set[str] = set()
        for p in self._files(kind):
            for rec in self._iter_file(p):
                k = rec.get("key")
                if k is not None:
                    if k in seen:
                        continue
                    seen.add(k)
                yield rec

    def count(self, kind: str | None = None) -> int:
        return sum(1 for _ in self.records(kind))

    @property
    def cache_dir(self) -> Path:
        """Where this run keeps DSPy's content-hashed LM cache (see `refine.lm.configure_cache`)."""
        return self.path / "lm_cache"

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
        if self._lockfile is not None:
            self._lockfile.close()
            self._lockfile = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
                self.mark_interrupted()
            elif exc_type is not None and issubclass(exc_type, RunFailedError) and exc[0] is not None:
                self.mark_failed(str(exc[0]))
        finally:
            self.close()

    def mark_failed(self, reason: str) -> None:
        """Record in the manifest that the run cannot go on (a `RunFailedError`, e.g. a refused API key)."""
        if self.shard is None and self._lockfile is not None:
            self.update_manifest(status="failed", failure=scrub_secrets(reason, self._secrets), failed_at=_now())

    def mark_interrupted(self) -> None:
        """Record in the manifest that the run was stopped by Ctrl-C/SIGTERM (resume it with --resume)."""
        if self.shard is None and self._lockfile is not None:
            self.update_manifest(status="interrupted", interrupted_at=_now())

    @classmethod
    def open_existing(cls, path: str | os.PathLike[str]) -> RunStore:
        """Open a finished or running run directory read-only (no lock, no config check)."""
        p = Path(path)
        if not (p / "manifest.json").exists():
            raise RunStoreError(f"{p} is not a run directory (no manifest.json). Pass the --out of a refine run.")
        store = cls.__new__(cls)
        store.path = p
        store.shard = None
        store.max_field_chars = MAX_FIELD_CHARS
        listed = store.manifest.get("files")
        store._listed = set(listed) if isinstance(listed, list) else None
        store._lock = threading.Lock()
        store._secrets = secret_values()
        store._keys = set()
        store._fds = {}
        store._lockfile = None
        for f in store._files():
            for rec in store._iter_file(f):
                if "key" in rec:
                    store._keys.add(rec["key"])
        return store


class ShardStore(RunStore):
    """A Ray worker's shard store, kept across the tasks of one worker process.

    Before each task it calls `refresh()`, which reads only what was appended since (`RunStore` keeps per-file
    offsets), so a retried task sees what a dead attempt wrote without re-reading the whole run.
    """

    def __init__(self, path: str, shard: str) -> None:
        if not (Path(path) / "manifest.json").exists():
            import socket

            # Without this check the worker would start a new, private run on its own disk: silently lost work.
            raise RunStoreError(
                f"The run directory {path} is not visible on Ray node {socket.gethostname()}. With a multi-node "
                "cluster put --out on a file system that every node mounts at the same path (NFS, Lustre, EFS)."
            )
        super().__init__(path, shard=shard)  # indexes every file; later `refresh()` calls read only new bytes

    def stale(self) -> bool:
        """True when the run directory was deleted (and maybe made again) since this store opened it.

        The store holds its shard's lock file open; once the directory is gone that file has no links left (a
        check on inode numbers would not do: a new directory often gets the old inode back).
        """
        f = self._lockfile
        try:
            return f is None or os.fstat(f.fileno()).st_nlink == 0
        except (OSError, ValueError):
            return True
