"""Frontend subrequests: the answers a frontend gives instead of building when the ``requestid``
option asks (``docker buildx build --call outline|targets|check``, ``buildctl --opt
requestid=frontend.lint``).

The results are BuildKit's (``frontend/subrequests``): the metadata keys ``result.json`` (the JSON
structures of its ``outline``, ``targets`` and ``lint`` packages, field names and order included),
``result.txt`` (what buildctl and buildx print) and, for lint, ``result.statuscode``; plus
``version``. Nothing here builds anything.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from buildkitpy.api import ops_pb2
from buildkitpy.client.textformat import TabWriter

from .lint import Lines, LintWarning

REQUEST_ID = "requestid"
DESCRIBE = "frontend.subrequests.describe"
OUTLINE = "frontend.outline"
TARGETS = "frontend.targets"
LINT = "frontend.lint"
SUBREQUESTS_CAP = "moby.buildkit.frontend.subrequests"


def _request(name: str, description: str, opts: list[dict[str, str]] | None,
             metadata: Sequence[str]) -> dict[str, Any]:
    return {
        "name": name,
        "version": "1.0.0",
        "type": "rpc",
        "description": description,
        "opts": opts,
        "inputs": None,
        "metadata": [{"name": m, "description": ""} for m in metadata],
        "refs": None,
    }


DEFINITIONS = {
    OUTLINE: _request(OUTLINE, "List all parameters current build target supports",
                      [{"name": "target", "description": "Target build stage"}],
                      ("result.json", "result.txt")),
    TARGETS: _request(TARGETS, "List all targets current build supports", [], ("result.json", "result.txt")),
    LINT: _request(LINT, "Lint a Dockerfile", [], ("result.json", "result.txt", "result.statuscode")),
    DESCRIBE: _request(DESCRIBE, "List available subrequest types", None, ("result.json", "result.txt")),
}


def go_json(value: Any) -> bytes:
    """``json.MarshalIndent(v, "", "  ")``: Go escapes ``<``, ``>`` and ``&`` in strings."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return text.encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def location_json(lines: Lines | None, source_index: int = 0) -> dict[str, Any] | None:
    """A ``pb.Location`` as Go marshals it: one range per line, zero fields left out."""
    if lines is None:
        return None
    loc: dict[str, Any] = {}
    if source_index:
        loc["sourceIndex"] = source_index
    start, end = lines
    loc["ranges"] = [{"start": {"line": n}, "end": {"line": n}} for n in range(start, max(start, end) + 1)]
    return loc


def _tab(write_lines: Any, padding: int) -> str:
    out = io.StringIO()
    tw = TabWriter(out, 0, 0, padding, " ")
    write_lines(tw)
    tw.flush()
    return out.getvalue()


def describe_result() -> dict[str, bytes]:
    """``frontend.subrequests.describe``: BuildKit's Dockerfile frontend lists outline and targets."""
    reqs = [DEFINITIONS[OUTLINE], DEFINITIONS[TARGETS], DEFINITIONS[DESCRIBE]]

    def rows(tw: TabWriter) -> None:
        tw.write("NAME\tVERSION\tDESCRIPTION\n")
        for r in reqs:
            tw.write(f"{r['name'].removeprefix('frontend.')}\t{r['version']}\t{r['description']}\n")

    return {"result.json": go_json(reqs), "result.txt": _tab(rows, 1).encode(), "version": b"1.0.0"}


# --- source excerpts (errdefs.Source.Print) -----------------------------------------------------------


def print_source(out: io.StringIO, filename: str, data: bytes, lines: Lines) -> None:
    """The excerpt BuildKit prints under an error or warning: the lines at fault marked ``>>>``."""
    text = data.decode("utf-8", "replace").split("\n")
    start, end = lines[0], max(lines)
    if start > len(text) or start < 1:
        return
    end = min(end, len(text))
    pad = 4 if end == start else 2
    first = start
    p = 0
    while p < pad:
        if start > 1:
            start -= 1
            p += 1
        if end != len(text):
            end += 1
            p += 1
        p += 1
    out.write(f"{filename}:{first}\n--------------------\n")
    for i in range(start, end + 1):
        mark = ">>>" if lines[0] <= i <= max(lines) else "   "
        out.write(f" {i:3d} | {mark} {text[i - 1]}\n")
    out.write("--------------------\n")


# --- lint -----------------------------------------------------------------------------------------------


@dataclass
class LintSource:
    filename: str
    data: bytes
    definition: ops_pb2.Definition | None = None
    language: str = "Dockerfile"


@dataclass
class LintResults:
    source: LintSource
    warnings: list[LintWarning] = field(default_factory=list)
    error: str | None = None
    error_lines: Lines | None = None

    def to_json(self) -> dict[str, Any]:
        warnings = []
        for w in self.warnings:
            item: dict[str, Any] = {"ruleName": w.rule.name}
            if w.rule.description:
                item["description"] = w.rule.description
            if w.rule.url:
                item["url"] = w.rule.url
            if w.detail:
                item["detail"] = w.detail
            item["location"] = location_json(w.lines) or {}
            warnings.append(item)
        out: dict[str, Any] = {
            "warnings": warnings or None,
            "sources": [_source_info_json(self.source)],
        }
        if self.error is not None:
            out["buildError"] = {"message": self.error, "location": location_json(self.error_lines) or {}}
        return out

    def text(self) -> str:
        """``result.txt``: the warnings sorted by line, each with its excerpt."""
        out = io.StringIO()

        def key(w: LintWarning) -> tuple[int, int]:
            return (0, 0) if w.lines is None else (1, w.lines[0])

        for w in sorted(self.warnings, key=key):
            out.write(f"\nWARNING: {w.rule.name}")
            if w.rule.url:
                out.write(f" - {w.rule.url}")
            out.write(f"\n{w.detail}\n")
            if w.lines is not None:
                print_source(out, self.source.filename, self.source.data, w.lines)
        return out.getvalue()

    def to_result(self) -> dict[str, bytes]:
        status = 1 if self.warnings or self.error is not None else 0
        return {
            "result.json": go_json(self.to_json()),
            "result.txt": self.text().encode(),
            "result.statuscode": str(status).encode(),
            "version": b"1.0.0",
        }


def _source_info_json(src: LintSource) -> dict[str, Any]:
    out: dict[str, Any] = {"filename": src.filename, "data": _b64(src.data)}
    if src.definition is not None:
        out["definition"] = _definition_json(src.definition)
    out["language"] = src.language
    return out


def _definition_json(d: ops_pb2.Definition) -> dict[str, Any]:
    """A ``pb.Definition`` as encoding/json writes it (the fields a local source carries)."""
    metadata = {}
    for dgst in sorted(d.metadata):
        m = d.metadata[dgst]
        item: dict[str, Any] = {}
        if m.ignore_cache:
            item["ignore_cache"] = True
        if m.description:
            item["description"] = dict(sorted(m.description.items()))
        if m.caps:
            item["caps"] = dict(sorted(m.caps.items()))
        metadata[dgst] = item
    return {"def": [_b64(op) for op in getattr(d, "def")], "metadata": metadata}


# --- targets --------------------------------------------------------------------------------------------


def targets_result(dockerfile: bytes) -> dict[str, bytes]:
    """``frontend.targets``: every stage, the last one the default. Raises the parse errors."""
    from .instructions import parse_instructions, parse_stages
    from .parser import parse

    stages, _ = parse_stages(parse_instructions(parse(dockerfile)))
    targets = []
    for i, st in enumerate(stages):
        t: dict[str, Any] = {}
        if st.name:
            t["name"] = st.name
        if i == len(stages) - 1:
            t["default"] = True
        if st.doc_comment:
            t["description"] = st.doc_comment
        if st.base_name:
            t["base"] = st.base_name
        if st.platform:
            t["platform"] = st.platform
        t["location"] = location_json((st.start_line, st.end_line))
        targets.append(t)

    def rows(tw: TabWriter) -> None:
        tw.write("TARGET\tDESCRIPTION\n")
        for t in targets:
            name = t.get("name", "")
            if not name and t.get("default"):
                name = "(default)"
            elif t.get("default"):
                name = f"{name} (default)"
            tw.write(f"{name}\t{t.get('description', '')}\n")

    result = {"targets": targets or None, "sources": [_b64(dockerfile)]}
    return {"result.json": go_json(result), "result.txt": _tab(rows, 1).encode(), "version": b"1.0.0"}


# --- outline --------------------------------------------------------------------------------------------


@dataclass
class OutlineArg:
    name: str
    value: str | None
    description: str
    lines: Lines


@dataclass
class OutlineMount:
    name: str
    required: bool
    lines: Lines


def outline_result(dockerfile: bytes, name: str, description: str, args: list[OutlineArg],
                   secrets: list[OutlineMount], ssh: list[OutlineMount]) -> dict[str, bytes]:
    """``frontend.outline``: the build args, secrets and SSH sockets the target uses."""
    out: dict[str, Any] = {}
    if name:
        out["name"] = name
    if description:
        out["description"] = description
    if args:
        items = []
        for a in args:
            item: dict[str, Any] = {"name": a.name}
            if a.description:
                item["description"] = a.description
            if a.value:
                item["value"] = a.value
            item["location"] = location_json(a.lines)
            items.append(item)
        out["args"] = items
    for key, mounts in (("secrets", secrets), ("ssh", ssh)):
        if mounts:
            items = []
            for m in mounts:
                item = {"name": m.name}
                if m.required:
                    item["required"] = True
                item["location"] = location_json(m.lines)
                items.append(item)
            out[key] = items
    out["sources"] = [_b64(dockerfile)]

    text = io.StringIO()
    if name or description:
        def head(tw: TabWriter) -> None:
            tw.write(f"TARGET:\t{name or '(default)'}\n")
            if description:
                tw.write(f"DESCRIPTION:\t{description}\n")
        text.write(_tab(head, 1) + "\n")
    if args:
        def arg_rows(tw: TabWriter) -> None:
            tw.write("BUILD ARG\tVALUE\tDESCRIPTION\n")
            for a in args:
                tw.write(f"{a.name}\t{a.value or ''}\t{a.description}\n")
        text.write(_tab(arg_rows, 3) + "\n")
    for title, mounts in (("SECRET", secrets), ("SSH", ssh)):
        if mounts:
            def mount_rows(tw: TabWriter, title: str = title, mounts: list[OutlineMount] = mounts) -> None:
                tw.write(f"{title}\tREQUIRED\n")
                for m in mounts:
                    tw.write(f"{m.name}\t{'true' if m.required else ''}\n")
            text.write(_tab(mount_rows, 3) + "\n")
    return {"result.json": go_json(out), "result.txt": text.getvalue().encode(), "version": b"1.0.0"}
