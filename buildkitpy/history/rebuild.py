"""Why did this step rebuild? (BuildKit's issue #2567, beyond what BuildKit records.)

For every vertex the solver settles we keep a fingerprint under its name and its place in the
frontend's file (``step_keys``; ``<root>/history/steps.db``):
the op as fields, the resolved cache digest, the build args, each input's stable cache key and, for
inputs whose content feeds the cache key, their checksum and a per-file digest map of the selected
paths. When a step runs instead of coming from the cache, its fingerprint is compared with the one
left by the previous build of the same vertex name and the first difference becomes the reason, in
this order: the cache was disabled (``--no-cache``, ignore-cache); no earlier record; a build arg or
env var of the command; another op field; the source resolved to other content (an image digest,
an http checksum, a git commit); an input file's content (the path); an input step that changed
(with that step's own reason); else the cache record was simply not there (pruned).

Local sources (``[internal] load build context``) transfer on every build and are not reported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, overload

import anyio
from google.protobuf import json_format
from google.protobuf.message import Message

from buildkitpy.fsutil.patterns import PatternMatcher
from buildkitpy.solver.cachekey import Selector
from buildkitpy.solver.contenthash import tree_digest
from buildkitpy.solver.loader import Vertex
from buildkitpy.solver.observe import StepFacts
from buildkitpy.solver.pathutil import resolve_wildcards, root_path
from buildkitpy.sqlitedb import open_db

log = logging.getLogger(__name__)

MAX_FILES = 20000  # per input: beyond this only the checksum is compared
MAX_VALUE = 80  # characters of a changed value shown in a reason
MAX_STEPS = 10000  # fingerprints kept (newest first)
MAX_INLINE = 1024  # longer op strings are fingerprinted by digest
MAX_OP_FIELDS = 4096  # ops whose fields are kept in memory
MAX_KEPT_OP = 8192  # bytes of an op body at most, for its fields to be kept
MAX_DECODED = 4096  # stored fingerprints kept decoded in memory
MAX_KEPT_DECODED = 4096  # bytes of a stored fingerprint at most, for it to be kept decoded
# Larger ones (a COPY of a big context lists every file: 420 KB for 10,000 files, 7 ms to
# decompress and parse) are kept decoded too, but only this many.
MAX_DECODED_LARGE = 16

BuildArgs = Callable[[str], Mapping[str, str] | None]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS steps (
    name TEXT PRIMARY KEY,
    fingerprint BLOB NOT NULL,
    build_ref TEXT NOT NULL,
    updated REAL NOT NULL
);
"""


def _short(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= MAX_VALUE else text[:MAX_VALUE - 1] + "…"


def _flatten(obj: object, prefix: str = "") -> Iterator[tuple[str, object]]:
    if isinstance(obj, dict):
        for k in sorted(obj):
            yield from _flatten(obj[k], f"{prefix}.{k}" if prefix else k)
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            yield from _flatten(item, f"{prefix}[{i}]")
    else:
        yield prefix, obj


@overload
def _compact(obj: dict[str, Any]) -> dict[str, Any]: ...
@overload
def _compact(obj: object) -> object: ...
def _compact(obj: object) -> object:
    """``obj`` with long strings (inline file data, ...) replaced by their digest and length, so a
    fingerprint stays small."""
    if isinstance(obj, dict):
        return {k: _compact(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_compact(v) for v in obj]
    if isinstance(obj, str) and len(obj) > MAX_INLINE:
        return f"sha256:{hashlib.sha256(obj.encode()).hexdigest()} ({len(obj)} characters)"
    return obj


def _op_key(op: Message) -> tuple[str | None, bytes, bytes | None, bytes | None] | None:
    """Everything of a ``pb.Op`` but its inputs, as bytes: the op body, platform and constraints
    (None when not set: an empty one set is a field of its own in the op's fields); None for an op
    too large to keep (inline file data: its fields are made each time)."""
    kind = op.WhichOneof("op")
    body = getattr(op, kind).SerializeToString(deterministic=True) if kind else b""
    if len(body) > MAX_KEPT_OP:
        return None
    return (kind, body,
            op.platform.SerializeToString(deterministic=True) if op.HasField("platform") else None,
            op.constraints.SerializeToString(deterministic=True) if op.HasField("constraints") else None)


def _env(op: dict) -> dict[str, str] | None:
    env = op.get("exec", {}).get("meta", {}).get("env")
    if env is None:
        return None
    return dict(e.split("=", 1) if "=" in e else (e, "") for e in env)


def file_digests(root: Path, selectors: list[Selector], limit: int = MAX_FILES) -> dict[str, str] | None:
    """``{path: digest}`` of every entry the selectors cover (None past ``limit`` entries)."""
    out: dict[str, str] = {}

    def add(rel: str, full: str) -> bool:
        st = os.lstat(full)
        out[rel] = "dir" if stat.S_ISDIR(st.st_mode) else tree_digest(full)
        return len(out) <= limit

    for sel in selectors:
        bases = resolve_wildcards(root, sel.path, sel.follow_links) if sel.wildcard else [sel.path]
        include = PatternMatcher(sel.include_patterns)
        exclude = PatternMatcher(sel.exclude_patterns)
        for base_rel in bases:
            base = root_path(root, base_rel, sel.follow_links)
            if not os.path.lexists(base):
                continue
            top = "/" + base_rel.strip("/")
            if not base.is_dir() or base.is_symlink():
                if not add(top, str(base)):
                    return None
                continue
            for dirpath, dirnames, filenames in os.walk(base):
                dirnames.sort()
                for name in sorted(dirnames) + sorted(filenames):
                    full = os.path.join(dirpath, name)
                    rel = os.path.relpath(full, base)
                    if (include and not include.matches_or_parent_matches(rel)) or \
                            (exclude and exclude.matches_or_parent_matches(rel)):
                        continue
                    if not add(os.path.join(top, rel), full):
                        return None
    return out


class RebuildRecorder:
    """Thread-safe. ``build_args(ref)`` gives a build's ``build-arg:*`` frontend attributes, or None
    for a build that has no history record (internal solves): its steps update the fingerprints but
    are not reported."""

    def __init__(self, root: Path, build_args: BuildArgs | None = None) -> None:
        self._lock = threading.Lock()
        # Fingerprints only explain rebuilds (after a power loss the newest steps report no earlier
        # build): not durable.
        self._db = open_db(Path(root) / "history" / "steps.db", _SCHEMA, durable=False)
        self._build_args = build_args or (lambda ref: {})
        self._stores = 0
        self._reports: dict[str, list[dict]] = {}
        self._by_digest: dict[tuple[str, str], dict] = {}
        # the op's bytes without its inputs (``_op_key``) -> its fields but the inputs (read-only
        # once made): a cached graph settles the same hundreds of ops every build, and turning
        # each into a dict was a third of settling them. (Not by vertex digest: a COPY from the
        # context has a new one every build, the local source's session being in it.)
        self._op_fields: dict[tuple[str | None, bytes, bytes | None, bytes | None], dict] = {}
        # a stored fingerprint -> its decoded form (read-only): a cached step's fingerprint is the
        # one it had the build before, and the steps of a cached graph were each read back,
        # decompressed and parsed every build
        self._decoded: dict[bytes, dict] = {}
        self._decoded_large: dict[bytes, dict] = {}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- RebuildSource ---------------------------------------------------------------------------

    def take(self, build_ref: str) -> list[dict]:
        with self._lock:
            reports = self._reports.pop(build_ref, [])
            for key in [k for k in self._by_digest if k[0] == build_ref]:
                del self._by_digest[key]
        return reports

    # -- fingerprints ----------------------------------------------------------------------------

    def _rows(self, names: list[str]) -> dict[str, bytes]:
        """The stored fingerprints of ``names`` (those that have one), in few queries: a cached
        graph settles hundreds of steps together, and a query each was a quarter of it."""
        out: dict[str, bytes] = {}
        unique = list(dict.fromkeys(names))
        with self._lock:
            for i in range(0, len(unique), 500):
                chunk = unique[i:i + 500]
                marks = ",".join("?" * len(chunk))
                out.update(self._db.execute(f"SELECT name, fingerprint FROM steps WHERE name IN ({marks})",
                                            chunk))
        return out

    def _load(self, keys: list[str],
              rows: dict[str, bytes] | None = None) -> tuple[dict | None, bytes | None]:
        """The newest fingerprint under the first of ``keys`` that has one, and its stored form
        (from ``rows`` when given: ``_rows`` of at least ``keys``)."""
        if rows is None:
            rows = self._rows(keys)
        for key in keys:
            data = rows.get(key)
            if data is None:
                continue
            kept = self._decoded if len(data) <= MAX_KEPT_DECODED else self._decoded_large
            decoded = kept.get(data)
            if decoded is not None:
                return decoded, data
            try:
                decoded = json.loads(zlib.decompress(data))
            except (zlib.error, ValueError):
                return None, None
            with self._lock:
                if len(kept) >= (MAX_DECODED if kept is self._decoded else MAX_DECODED_LARGE):
                    kept.clear()
                kept[data] = decoded
            return decoded, data
        return None, None

    def _store_many(self, rows: list[tuple[list[str], bytes, str]],
                    stored: Mapping[str, bytes] | None = None) -> None:
        """``(keys, stored fingerprint, build ref)`` of many steps, in one commit. A name whose row
        already holds that fingerprint (``stored``: the rows read before) only gets its build and
        time: rewriting a big context's COPY (~420 KB, under two names) every build was most of
        this commit."""
        now = time.time()
        stored = stored or {}
        touched: list[tuple[str, float, str]] = []
        written: list[tuple[str, bytes, str, float]] = []
        for keys, data, ref in rows:
            for key in keys:
                if stored.get(key) == data:
                    touched.append((ref, now, key))
                else:
                    written.append((key, data, ref, now))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if written:
                    self._db.executemany("INSERT OR REPLACE INTO steps (name, fingerprint, build_ref, "
                                         "updated) VALUES (?,?,?,?)", written)
                if touched:
                    self._db.executemany("UPDATE steps SET build_ref=?, updated=? WHERE name=?", touched)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            before, self._stores = self._stores, self._stores + len(rows)
            if before // 200 != self._stores // 200:  # keep the newest MAX_STEPS fingerprints
                self._db.execute("DELETE FROM steps WHERE name NOT IN "
                                 "(SELECT name FROM steps ORDER BY updated DESC LIMIT ?)", (MAX_STEPS,))

    async def settled(self, facts: StepFacts) -> None:
        await anyio.to_thread.run_sync(self.settle_many, [facts])

    def settle_many(self, facts: list[StepFacts]) -> None:
        """Compare each step with its previous build and keep the fingerprints, all in one commit
        (blocking; a cached graph settles hundreds of steps together)."""
        rows: list[tuple[list[str], bytes, str]] = []
        try:
            stored = self._rows([key for f in facts for key in step_keys(f.vertex)])
        except Exception:  # noqa: BLE001 - each step then reads its own (and reports its failure)
            stored = None
        for f in facts:
            try:
                row = self._settle(f, stored)
            except Exception:  # noqa: BLE001 - a report must never fail a build
                log.warning("cannot record why %s rebuilt", f.vertex.name, exc_info=True)
                continue
            if row is not None:
                rows.append(row)
        if rows:
            try:
                self._store_many(rows, stored)
            except Exception:  # noqa: BLE001
                log.warning("cannot keep the fingerprints of %d steps", len(rows), exc_info=True)

    def _fingerprint(self, facts: StepFacts, previous: dict | None) -> dict:
        v, cm = facts.vertex, facts.cache_map
        key = _op_key(v.op)
        op = self._op_fields.get(key) if key is not None else None
        if op is None:
            op = _compact(json_format.MessageToDict(v.op, preserving_proto_field_name=True))
            op.pop("inputs", None)
            if key is not None:
                if len(self._op_fields) >= MAX_OP_FIELDS:
                    self._op_fields.clear()
                self._op_fields[key] = op
        args = {k.removeprefix("build-arg:"): val for k, val in (self._build_args(facts.job.id) or {}).items()
                if k.startswith("build-arg:")}
        inputs = []
        prev_inputs = (previous or {}).get("inputs", [])
        for i, (name, keys, dep) in enumerate(zip(facts.input_names, facts.input_keys, cm.deps, strict=True)):
            entry: dict = {"name": name}
            checksum = facts.content[i] if facts.content is not None else None
            if checksum is not None and dep.content:
                # the checksum, not the input's key (unused for such an input, ``_reason``): the
                # key of a local source is new every build (its session), and with it every COPY
                # from the context had a new fingerprint to encode and compress every build
                entry["checksum"] = checksum
                prev = prev_inputs[i] if i < len(prev_inputs) else {}
                if prev.get("checksum") == checksum and "files" in prev:
                    entry["files"] = prev["files"]
                else:
                    snap = facts.inputs[i]
                    with snap.mount() as root:
                        entry["files"] = file_digests(Path(root), dep.content)
            else:
                entry["key"] = keys.stable.id
            inputs.append(entry)
        return {"kind": v.kind, "op": op, "cache_digest": cm.digest, "build_args": args, "inputs": inputs}

    def _settle(self, facts: StepFacts,
                stored_rows: dict[str, bytes] | None = None) -> tuple[list[str], bytes, str] | None:
        """The step's report, and the row keeping its fingerprint. When the fingerprint is
        unchanged, its stored form is kept (a COPY of a large context lists every file, and
        encoding it again cost ~0.3 s per build)."""
        v = facts.vertex
        if facts.cache_map.always_run and not facts.job.no_cache and not v.ignore_cache:
            return None  # local sources: synced on every build, nothing to explain
        keys = step_keys(v)
        previous, stored = self._load(keys, stored_rows)
        current = self._fingerprint(facts, previous)
        if not facts.cached and self._build_args(facts.job.id) is not None:
            kind, reason = self._reason(facts, previous, current)
            report = {"vertex": v.digest, "name": v.name, "kind": kind, "reason": reason}
            with self._lock:
                self._reports.setdefault(facts.job.id, []).append(report)
                self._by_digest[(facts.job.id, v.digest)] = report
        data = stored if current == previous and stored is not None else \
            zlib.compress(json.dumps(current, separators=(",", ":")).encode())
        return keys, data, facts.job.id

    def _reason(self, facts: StepFacts, prev: dict | None, cur: dict) -> tuple[str, str]:
        if facts.job.no_cache:
            return "no-cache", "the cache was disabled for this build (--no-cache)"
        if facts.vertex.ignore_cache:
            return "no-cache", "the cache was disabled for this step (ignore-cache / --no-cache-filter)"
        if prev is None:
            return "new", "no earlier build of this step"
        if prev.get("kind") != cur["kind"]:
            return "op", f"the operation changed from {prev.get('kind')} to {cur['kind']}"
        old_env, new_env = _env(prev.get("op", {})), _env(cur["op"])
        if old_env is not None and new_env is not None and old_env != new_env:
            for key in sorted(set(old_env) | set(new_env)):
                if old_env.get(key) != new_env.get(key):
                    what = "build arg" if key in cur["build_args"] or key in prev.get("build_args", {}) \
                        else "env"
                    return ("build-arg" if what == "build arg" else "env",
                            f"{what} {key} changed: {_change(old_env.get(key), new_env.get(key))}")
        old_fields = dict(_flatten(prev.get("op", {})))
        new_fields = dict(_flatten(cur["op"]))
        for path in sorted(set(old_fields) | set(new_fields)):
            if path.startswith("exec.meta.env["):
                continue
            if old_fields.get(path) != new_fields.get(path):
                return "op-field", f"{path} changed: {_change(old_fields.get(path), new_fields.get(path))}"
        if prev.get("cache_digest") != cur["cache_digest"]:
            return "source", "the source resolved to different content than in the earlier build"
        prev_inputs = prev.get("inputs", [])
        for i, inp in enumerate(cur["inputs"]):
            old = prev_inputs[i] if i < len(prev_inputs) else None
            if old is None:
                return "input", f"input {i} ({inp['name']}) is new"
            if "checksum" in inp and old.get("checksum") not in (None, inp["checksum"]):
                return "file", _file_change(inp, old)
        for i, inp in enumerate(cur["inputs"]):
            old = prev_inputs[i]
            if "checksum" not in inp and old.get("key") != inp["key"]:  # content-hashed: no key kept
                because = ""
                src = facts.vertex.inputs[i].digest
                with self._lock:
                    upstream = self._by_digest.get((facts.job.id, src))
                if upstream is not None:
                    because = f" (it ran because: {upstream['reason']})"
                return "input", f"input step {inp['name'] or src} changed{because}"
        if len(prev_inputs) != len(cur["inputs"]):
            return "input", "the number of inputs changed"
        return "cache-miss", "nothing differs from the earlier build: its cache record was not found " \
                             "(pruned or never kept)"


def step_keys(v: Vertex) -> list[str]:
    """The vertex name, then the step's place: frontends put values of build args into names
    (``RUN echo "hello"``), so a changed arg also changes the name. The place is the name's ``[n/m]``
    prefix and instruction with the source file and line (``[3/4] RUN @Dockerfile:4``)."""
    keys = [v.name]
    if v.name.startswith("[") and "]" in v.name and v.sources and v.sources[0].ranges:
        prefix, _, rest = v.name.partition("]")
        instruction = rest.split(None, 1)[0] if rest.strip() else ""
        src = v.sources[0]
        keys.append(f"{prefix}] {instruction} @{src.filename}:{src.ranges[0][0]}")
    return keys


def _change(old: object, new: object) -> str:
    if old is None:
        return f"(unset) → {_short(new)}"
    if new is None:
        return f"{_short(old)} → (unset)"
    return f"{_short(old)} → {_short(new)}"


def _file_change(cur: dict, old: dict) -> str:
    new_files, old_files = cur.get("files"), old.get("files")
    where = f" in {cur['name']}" if cur.get("name") else ""
    if new_files is None or old_files is None:
        return f"the content of the copied files{where} changed"
    for path in sorted(set(new_files) | set(old_files)):
        if path not in old_files:
            return f"file {path} was added{where}"
        if path not in new_files:
            return f"file {path} was removed{where}"
        if new_files[path] != old_files[path]:
            return f"file {path} changed{where}"
    return f"the content of the copied files{where} changed (metadata only)"
