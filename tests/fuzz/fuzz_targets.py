"""Fuzz targets over the pure parsers and loaders that read what clients send.

Each target pairs a hypothesis strategy (hostile input shaped enough to get past the first checks)
with a check. The property, for every target: the code under test returns, or raises one of the
target's declared error types with a clear message (non-empty, printable as UTF-8); any other
exception is a finding. Targets that write files (tar unpacking, filesync) also assert that nothing
outside the destination directory changed. ``tests/fuzz/test_fuzz.py`` runs them for a bounded number
of examples; ``hack/fuzz`` runs them for a time budget.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import hypothesis
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protogen import messages

from buildkitpy import llb
from buildkitpy.api import fsutil_stat_pb2, fsutil_wire_pb2, ops_pb2
from buildkitpy.dockerapi import contexttar, options
from buildkitpy.dockerapi.http import ClientGone, HTTPConnection, HTTPError
from buildkitpy.dockerapi.server import Router, version_tuple
from buildkitpy.errors import BuildkitpyError, InvalidArgument, SolveError
from buildkitpy.frontend.dockerfile import instructions, parser, shell
from buildkitpy.frontend.dockerfile.convert import ConvertError, convert
from buildkitpy.frontend.dockerfile.errors import DockerfileError
from buildkitpy.frontend.dockerignore import DockerIgnore
from buildkitpy.fsutil import modes, packets
from buildkitpy.fsutil.errors import ApplyError, DiffCopyError, RemoteError
from buildkitpy.fsutil.patterns import PatternError
from buildkitpy.fsutil.receiver import disk_receiver
from buildkitpy.image.mediatypes import UNCOMPRESSED
from buildkitpy.image.unpack import LayerError, apply_layer_blob
from buildkitpy.solver import loader
from buildkitpy.solver.ops.tarunpack import unpack


@dataclass(frozen=True)
class Target:
    name: str
    strategy: st.SearchStrategy[Any]
    check: Callable[[Any], None]
    allowed: tuple[type[BaseException], ...]
    examples: int  # for the bounded (CI) run: a few seconds each


# What Python's own exceptions say, never what one of our errors should tell a user.
PYTHON_TEXTS = re.compile(r"Traceback|object has no attribute|invalid literal for int\(\)|NoneType|"
                          r"unhashable type|object is not (subscriptable|iterable|callable)|<class '|"
                          r"\[Errno -?\d+\]|codec can't (en|de)code|surrogates not allowed|"
                          r"(Key|Index|Type|Attribute|Value|Recursion|Overflow|Unicode\w*)Error\b")


def check_message(exc: BaseException) -> None:
    """A declared error must say something a user can read, in our words."""
    text = str(exc)
    assert text.strip(), f"{type(exc).__name__} with an empty message"
    text.encode("utf-8")  # no surrogate escapes: it must cross gRPC/HTTP as it is
    found = PYTHON_TEXTS.search(text)
    assert found is None, f"{type(exc).__name__} says {found.group(0)!r} (Python, not ours): {text[:500]}"


def run_checked(target: Target, value: Any) -> None:
    try:
        target.check(value)
    except target.allowed as exc:
        check_message(exc)


def run_target(target: Target, examples: int, *, seed: int | None = None, derandomize: bool = False,
               on_example: Callable[[], None] | None = None) -> None:
    """One hypothesis run of ``target`` over ``examples`` inputs; raises the shrunk failing example.
    ``derandomize``: the same inputs every run (what CI runs), else new ones (``seed``, or random)."""

    @settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize,
              suppress_health_check=list(HealthCheck))
    @given(target.strategy)
    def property_holds(value: Any) -> None:
        if on_example is not None:
            on_example()
        run_checked(target, value)

    if seed is not None:
        property_holds = hypothesis.seed(seed)(property_holds)
    property_holds()


# --- the Dockerfile parser and converter -------------------------------------------------------------

INSTRUCTIONS = ["FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
                "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "from",
                "run", "BOGUS"]
FLAGS = ["--from=s0", "--from=busybox", "--from=0", "--from=", "--chown=1:1", "--chown=-1:-1",
         "--chown=ghost",
         "--chmod=755", "--chmod=999", "--chmod=u+x", "--link", "--parents", "--exclude=*.x",
             "--keep-git-dir",
         "--mount=type=cache,target=/c", "--mount=type=secret,id=x", "--mount=type=bind,from=s0,source=/a",
         "--mount=type=tmpfs,target=/t,size=1g", "--mount=type=ssh", "--mount=", "--mount=type=bogus",
         "--network=none", "--network=host", "--security=insecure", "--platform=linux/amd64",
         "--platform=$BUILDPLATFORM", "--platform=../../", "--interval=1s", "--interval=x", "--retries=-1",
         "--start-period=5s", "--checksum=sha256:" + "a" * 64, "--unknown", "--"]
TOKENS = ["busybox", "scratch", "s0", "s1", "AS", "as", "/a", "b", "../b", "/", ".", "$A", "${A}", "${A:-x}",
          "${A:+y}", "${A?err}", "${A:?}", "${#A}", "${A%%*}", "${A#a}", "${A/x/y}", "${", "}", "$",
              '["sh","-c","x"]',
          '["a"', "[", "]", '"', "'", "\\", "`", "<<EOF", "<<-EOF", '<<"EOF"', "EOF", "*", "?", "[a-",
                                                                                                  "=", "a=b",
          "A=", "=b", "0", "-1", "4294967296", "1e999", "\t", "#", "\x00", "\udcff", "é", "linux/amd64",
              "../../",
          ":", ",", "NONE", "CMD", "echo", "hi", "A", "B=2", "$BUILDPLATFORM", "${TARGETARCH}", "80/tcp",
          "65536", "SIGKILL", "&&", ";", "|", ">", "x" * 80]
DIRECTIVES = ["# syntax=docker/dockerfile:1", "# escape=`", "# escape=\\", "# escape=x", "# check=skip=all",
              "# check=error=true", "#directive=x", "# syntax="]


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


@st.composite
def _line(draw: st.DrawFn, first: bool = False) -> str:
    instr = "FROM" if first else draw(st.sampled_from(INSTRUCTIONS))
    words = draw(st.lists(st.sampled_from(FLAGS), max_size=2))
    words += draw(st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=6)), max_size=6))
    sep = draw(st.sampled_from([" ", " ", "\t", " \\\n ", "` \n"]))
    line = instr + " " + sep.join(words)
    if draw(st.integers(0, 9)) == 0:  # a heredoc body
        line += "\n" + "\n".join(draw(st.lists(st.sampled_from(TOKENS), max_size=3))) + "\nEOF"
    return line


@st.composite
def dockerfiles(draw: st.DrawFn, *, starts_with_from: bool = False) -> bytes:
    lines = draw(st.lists(st.sampled_from(DIRECTIVES), max_size=2))
    if starts_with_from or draw(st.booleans()):
        lines.append(draw(_line(first=True)))
    lines += draw(st.lists(_line(), max_size=10))
    text = draw(st.sampled_from(["\n", "\r\n", "\n\n"])).join(lines)
    data = _encode(text)
    for _ in range(draw(st.integers(0, 2))):  # byte-level damage: invalid UTF-8, NUL, cut lines
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\x00", b"\xc3", b"\\", b"\n", b"\r",
                                                 b""])) + data[at:]
    return data


def check_parse(data: bytes) -> None:
    result = parser.parse(data)
    for node in result.nodes:
        node.dump()
    instructions.parse_stages(instructions.parse_instructions(result))


async def _resolve(ref: str, platform: llb.Platform) -> tuple[str, bytes]:
    config = {"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"], "User": "1:1"},
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "b" * 64]}}
    return "sha256:" + "a" * 64, json.dumps(config).encode()


CONVERT_OPTS = [{}, {"target": "s0"}, {"target": "nope"}, {"build-arg:A": "1"}, {"platform": "linux/arm64"},
                {"platform": "linux/amd64,linux/arm64"}, {"build-arg:A": "${B}"}, {"label:x": "\x00"}]


def check_convert(value: tuple[bytes, dict[str, str]]) -> None:
    data, opts = value
    result = anyio.run(lambda: convert(data, opts=opts, resolve_image=_resolve,
                                       build_platform=llb.Platform("linux", "amd64")))
    for platform in result.results:
        loader.load_definition(platform.definition)  # what we produce, the solver must accept


# --- shell word expansion --------------------------------------------------------------------------


@st.composite
def shell_words(draw: st.DrawFn) -> tuple[str, dict[str, str], str]:
    pieces = draw(st.lists(st.one_of(st.sampled_from(["$", "${", "}", ":", "-", "+", "?", "#", "##", "%",
                                                      "%%",
                                                      "/", "//", "\\", "`", "'", '"', " ", "A", "B", "_1",
                                                      "*", "[", "]", "\x00", "\udcff", "é", "${A:-${B}}",
                                                      "${A/#x/y}", "${A:1:2}", "${!A}"]),
                                     st.text(max_size=3)), max_size=16))
    env = draw(st.dictionaries(st.sampled_from(["A", "B", "_1", "a", "HOME", ""]),
                               st.sampled_from(["", "x", "a b", "$A", "*", "\\", "é", "x" * 50]), max_size=4))
    return "".join(pieces), env, draw(st.sampled_from(["\\", "`"]))


def check_shell(value: tuple[str, dict[str, str], str]) -> None:
    word, env, escape = value
    shell.process_word(word, env, escape)
    shell.process_words(word, env, escape)
    shell.process_word_with_matches(word, env, escape)


# --- .dockerignore ------------------------------------------------------------------------------------


@st.composite
def ignore_files(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    glob = st.lists(st.sampled_from(["*", "**", "?", "[", "]", "[a-z]", "[^a]", "[!a]", "\\", "/", ".",
                                     "..", "!",
                                     "#", " ", "a", "b", "x.txt", "\x00", "\udcff", "{", "}", "-", "^"]),
                    max_size=8).map("".join)
    lines = draw(st.lists(glob, max_size=8))
    paths = draw(st.lists(glob, min_size=1, max_size=4))
    return _encode(draw(st.sampled_from(["\n", "\r\n"])).join(lines)), paths


def check_dockerignore(value: tuple[bytes, list[str]]) -> None:
    data, paths = value
    ignore = DockerIgnore.parse(data)
    for path in paths:
        ignore.matches(path)


# --- the LLB definition loader ---------------------------------------------------------------------


@st.composite
def definitions(draw: st.DrawFn) -> ops_pb2.Definition:
    """Ops from every field of pb.Op, wired to earlier ops (or to digests of nothing), then maybe
    damaged at the byte level."""
    defn = ops_pb2.Definition()
    digests: list[str] = []
    for op in draw(st.lists(messages(ops_pb2.Op.DESCRIPTOR, depth=3), max_size=4)):
        del op.inputs[:]
        for _ in range(draw(st.integers(0, 2))):
            inp = op.inputs.add()
            inp.digest = draw(st.sampled_from(digests)) if digests and draw(st.booleans()) else \
                draw(st.sampled_from(["", "sha256:" + "1" * 64, "md5:x"]))
            inp.index = draw(st.sampled_from([0, 0, 1, -1, 2**40]))
        raw = op.SerializeToString()
        getattr(defn, "def").append(raw)
        digests.append(loader.digest_of(raw))
    terminal = ops_pb2.Op()
    if digests and draw(st.integers(0, 4)):
        terminal.inputs.add(digest=digests[-1], index=draw(st.sampled_from([0, 0, 1])))
    getattr(defn, "def").append(terminal.SerializeToString())
    if draw(st.booleans()):
        defn.MergeFrom(draw(messages(ops_pb2.Definition.DESCRIPTOR, depth=3).map(_without_def)))
    raw_ops = getattr(defn, "def")
    if raw_ops and draw(st.integers(0, 3)) == 0:  # flip, cut or extend one marshalled op
        i = draw(st.integers(0, len(raw_ops) - 1))
        data = bytearray(raw_ops[i])
        at = draw(st.integers(0, len(data)))
        data[at:at + draw(st.integers(0, 2))] = draw(st.binary(max_size=3))
        raw_ops[i] = bytes(data)
    return defn


def _without_def(defn: ops_pb2.Definition) -> ops_pb2.Definition:
    del getattr(defn, "def")[:]
    return defn


def check_loader(defn: ops_pb2.Definition) -> None:
    graph = loader.load_definition(defn)
    for digest in graph.order:
        vertex = graph.vertex(digest)
        assert vertex.name is not None


# --- filesync packets (the daemon's receiving side of DiffCopy) ---------------------------------------

_KINDS = [0, modes.MODE_DIR, modes.MODE_SYMLINK, modes.MODE_NAMED_PIPE, modes.MODE_SOCKET,
          modes.MODE_DEVICE, modes.MODE_DEVICE | modes.MODE_CHAR_DEVICE, modes.MODE_IRREGULAR]
_PATHS = ["a", "b", "a/b", "a/b/c", "d", "d/x", "../x", "../../outside/x", "@BOX@/outside/abs", "a/../../x",
          "./a", "a//b",
          ".", "", "a\x00b", "\udcff", "link", "link/x", "link/../x", "A", "a/", "é"]
# Absolute paths point into the box (``@BOX@``, rewritten when the input is applied), never at the
# host's own "/" or "/etc": an escape then shows as a change outside ``dest`` instead of changing
# the machine the tests run on (an earlier version chowned and chmodded the host's "/").
_LINKS = ["", "a", "../outside", "../../outside/x", "@BOX@", "@BOX@/outside", "a/b", "link", "..", "x" * 300]


@st.composite
def packet_streams(draw: st.DrawFn) -> list[bytes]:
    """A sender's packets, mostly well-formed (so the receiver gets deep), each as its wire bytes."""
    out: list[bytes] = []
    n = 0
    for _ in range(draw(st.integers(0, 10))):
        kind = draw(st.integers(0, 9))
        packet = fsutil_wire_pb2.Packet()
        if kind <= 4:
            stat = fsutil_stat_pb2.Stat(
                path=draw(st.sampled_from(_PATHS)).encode("utf-8", "surrogateescape").decode("utf-8",
                                                                                             "replace"),
                mode=draw(st.sampled_from(_KINDS)) | draw(st.sampled_from([0o644, 0o755, 0o7777, 0])),
                size=draw(st.sampled_from([0, 1, 3, -1, 2**40])), uid=draw(st.sampled_from([0, 1000, 2**31])),
                gid=draw(st.sampled_from([0, 1000])), modTime=draw(st.sampled_from([0, -1, 2**62])),
                linkname=draw(st.sampled_from(_LINKS)), devmajor=draw(st.sampled_from([0, 1, 2**20])),
                devminor=draw(st.sampled_from([0, 3])))
            if draw(st.integers(0, 5)) == 0:
                stat.xattrs[draw(st.sampled_from(["user.a", "security.capability", "", "trusted.x"]))] = b"v"
            packet.type = packets.STAT
            packet.stat.CopyFrom(stat)
            n += 1
        elif kind == 5:
            packet.type = packets.STAT  # end of listing
        elif kind <= 7:
            packet.type = packets.DATA
            packet.ID = draw(st.integers(0, max(n, 1))) if draw(st.integers(0, 5)) else 2**32 - 1
            packet.data = draw(st.sampled_from([b"", b"x", b"abc", b"\x00" * 5]))
        elif kind == 8:
            packet.type = draw(st.sampled_from([packets.FIN, packets.ERR, packets.REQ, 17]))
            packet.data = draw(st.sampled_from([b"", b"\xff boom"]))
        data = packet.SerializeToString()
        if kind == 9:
            data = draw(st.binary(max_size=12))  # not a Packet at all
        out.append(data)
    if draw(st.integers(0, 3)) == 0:  # a well-formed ending: end of listing, then data for the files
        out.append(fsutil_wire_pb2.Packet(type=packets.STAT).SerializeToString())
    return out


class Box:
    """A temporary directory holding ``dest`` (where the input may write) and, beside it, ``outside``
    with a canary file: a write anywhere but ``dest`` changes the box's listing outside ``dest``."""

    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="bkpy-fuzz-")
        self.root = Path(self.tmp.name)
        self.dest = self.root / "dest"
        (self.root / "outside").mkdir()
        (self.root / "outside" / "canary").write_text("canary")
        self.before = self._outside()

    def _outside(self) -> dict[str, tuple[int, ...]]:
        # the box itself (a link to ``@BOX@``): its owner and mode, not its times (dest and the
        # archive are made in it)
        st_root = os.lstat(self.root)
        seen: dict[str, tuple[int, ...]] = {
            str(self.root): (st_root.st_mode, st_root.st_uid, st_root.st_gid, -1, -1, st_root.st_ino)}
        for dirpath, dirnames, filenames in os.walk(self.root):
            if Path(dirpath) == self.root:
                dirnames[:] = [d for d in dirnames if d != "dest"]
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                st_ = os.lstat(path)
                seen[path] = (st_.st_mode, st_.st_size, st_.st_mtime_ns, st_.st_ctime_ns, st_.st_nlink,
                              st_.st_ino)
        return seen

    def assert_untouched(self) -> None:
        """Nothing outside ``dest`` changed (a hard link to it changes its link count), and nothing
        in ``dest`` is a file from outside (a hard link made through a symlink)."""
        after = self._outside()
        changed = {k for k in set(after) | set(self.before) if after.get(k) != self.before.get(k)}
        changed.discard(str(self.root / "archive.tar"))
        assert not changed, f"written outside the destination: {sorted(changed)}"
        outside_inodes = {v[5] for v in after.values()}
        for dirpath, _, filenames in os.walk(self.dest):
            for name in filenames:
                path = os.path.join(dirpath, name)
                assert os.lstat(path).st_ino not in outside_inodes, f"{path} is a file from outside"

    def close(self) -> None:
        self.tmp.cleanup()


def _in_box(data: bytes, box: Path) -> bytes:
    """A packet with ``@BOX@`` in its path or link target, rewritten to point into ``box``."""
    if b"@BOX@" not in data:
        return data
    try:
        packet = fsutil_wire_pb2.Packet.FromString(data)
    except DecodeError:
        return data
    packet.stat.path = packet.stat.path.replace("@BOX@", str(box))
    packet.stat.linkname = packet.stat.linkname.replace("@BOX@", str(box))
    return packet.SerializeToString()


def check_filesync(stream: list[bytes]) -> None:
    box = Box()
    try:
        receiver = disk_receiver(box.dest)
        try:
            for data in (_in_box(d, box.root) for d in stream):
                receiver.receive(packets.decode_packet(data))
            receiver.end_of_stream()
        finally:
            receiver.sink.close()
            box.assert_untouched()
    finally:
        box.close()


# --- tar unpacking (ADD of a local archive) ------------------------------------------------------------

_TAR_TYPES = [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
              tarfile.BLKTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE, b"Z"]


@st.composite
def tar_archives(draw: st.DrawFn) -> tuple[list[tuple[str, bytes, str, dict[str, Any]]], bytes, Any]:
    """Member specs (name, type, link target, header fields) with escape-shaped names and links;
    names and links ``@BOX@`` are rewritten to the box's absolute path when written."""
    names = st.sampled_from(["a", "a/b", "../x", "../../outside/pwned", "@BOX@/abs", "@BOX@/outside/pwned",
                             "link/x", "link/../../x", "dirlink/y", "./c", "a/./b/../c", ".", "..", "x" * 120,
                             "d/" * 60 + "deep", "\udcff", "a\x00b", "é", ".wh.a", "a/.wh..wh..opq",
                             ".wh..wh..opq", "link/.wh.x", ".wh...", "a/.wh.b"])
    links = st.sampled_from(["a", "../outside", "../../outside", "@BOX@", "@BOX@/outside",
                             "@BOX@/outside/canary",
                             "../outside/canary", "a/b", "missing", "link", "", "x" * 200])
    members = draw(st.lists(st.tuples(names, st.sampled_from(_TAR_TYPES), links,
                                      st.fixed_dictionaries({}, optional={
        "mode": st.sampled_from([0o644, 0o7777, 0o4755, 0, 2**21 - 1]),
        "uid": st.sampled_from([0, 1000, 2**21 - 1, 2**40]),
        "mtime": st.sampled_from([0, -1, 2**33, 2**40]),
        "devmajor": st.sampled_from([1, 0, 2**20]), "devminor": st.sampled_from([3, 0]),
        "size": st.sampled_from([0, 1, 2**33]),  # a header announcing more than follows
        "pax_headers": st.sampled_from([{"path": "../../outside/pax"}, {"linkpath": "@BOX@/outside"},
                                        {"size": "-1"},
                                        {"mtime": "x"}, {"uid": "99999999999999999999"}, {"path": "y" * 5000},
                                        {"SCHILY.xattr.user.a": "v"}]),
    })), max_size=6))
    damage = draw(st.one_of(st.none(), st.tuples(st.integers(0, 4096), st.binary(min_size=1, max_size=8))))
    fmt = draw(st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]))
    owner = draw(st.sampled_from([None, (0, 0), (1000, 1000)]))
    return members, damage, (fmt, owner)


def _write_tar(path: Path, box: Path, members: list[Any], damage: Any, fmt: int) -> None:
    """Headers written as given (a size larger than the data that follows included)."""
    buf = io.BytesIO()
    for name, kind, link, fields in members:
        info = tarfile.TarInfo(name.replace("@BOX@", str(box)))
        info.type = kind
        info.linkname = link.replace("@BOX@", str(box))
        data = b"data" if kind in (tarfile.REGTYPE, tarfile.CONTTYPE) else b""
        info.size = len(data)
        for key, value in fields.items():
            if key == "pax_headers":
                value = {k: v.replace("@BOX@", str(box)) for k, v in value.items()}
            setattr(info, key, value)
        try:
            header = info.tobuf(fmt, "utf-8", "surrogateescape")
        except (ValueError, UnicodeError, tarfile.TarError, OverflowError):
            continue  # a header Python's tarfile cannot even write: not what we test
        buf.write(header + data + b"\0" * (-len(data) % tarfile.BLOCKSIZE))
    buf.write(b"\0" * (2 * tarfile.BLOCKSIZE))
    data = buf.getvalue()
    if damage is not None:
        at, junk = damage
        at %= max(len(data), 1)
        data = data[:at] + junk + data[at + len(junk):]
    path.write_bytes(data)


def _unpack_in_box(value: Any, unpack_into: Callable[[Path, Path, Any], None], *,
                   make_dest: bool) -> None:
    """Write the drawn archive into a fresh box and hand it to ``unpack_into(archive, dest, owner)``;
    whatever that raises, nothing outside ``dest`` may have changed."""
    members, damage, (fmt, owner) = value
    box = Box()
    try:
        archive = box.root / "archive.tar"
        _write_tar(archive, box.root, members, damage, fmt)
        box.before = box._outside()
        if make_dest:
            box.dest.mkdir()
        try:
            unpack_into(archive, box.dest, owner)
        finally:
            box.assert_untouched()
    finally:
        box.close()


def check_tar(value: Any) -> None:
    """ADD of a local archive."""
    _unpack_in_box(value, unpack, make_dest=True)


def check_context_tar(value: Any) -> None:
    """The build context ``docker build`` uploads to the Engine API (``POST /build``)."""
    _unpack_in_box(value, lambda archive, dest, _: contexttar.extract(archive, dest), make_dest=False)


def check_image_layer(value: Any) -> None:
    """A layer of an image from a registry, applied onto a snapshot's tree (whiteouts included)."""
    _unpack_in_box(value, lambda archive, dest, _: apply_layer_blob(archive, UNCOMPRESSED, dest, None),
                   make_dest=True)


# --- the Docker Engine API's HTTP requests -----------------------------------------------------------


@st.composite
def http_requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["GET", "POST", "HEAD", "DELETE", "PUT", "G\x00T", "", "GET GET"]))
    path = draw(st.sampled_from(["/_ping", "/v1.44/build", "/build", "/v99/build", "/v1.x/build",
                                 "/images/json",
                                 "/images/a%2Fb/json", "/%ff", "/v1.24/images/../../x", "*", "//", "/session",
                                 "/grpc", "/" + "a" * 300]))
    query = draw(st.lists(st.tuples(
        st.sampled_from(["t", "q", "rm", "forcerm", "buildargs", "labels", "cachefrom", "memory", "memswap",
                         "cpushares", "cpuperiod", "shmsize", "networkmode", "extrahosts", "version",
                             "target",
                         "ulimits", "outputs", "isolation", "securityopt", "platform", "dockerfile", "%zz"]),
        st.sampled_from(["", "1", "-1", "x", "1e3", "99999999999999999999", "{}", "[]", '{"a":1}',
                         '{"a":null}',
                         '["x"]', "[1]", "null", '"s"', "{", "host", "a:b", "\x00", "%00", "%ff", "é", "2",
                         "6291456"])), max_size=5))
    qs = "&".join(f"{quote(k, safe='%')}={quote(v, safe='%')}" for k, v in query)
    target = path + ("?" + qs if qs or draw(st.booleans()) else "")
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 x", ""]))
    headers = draw(st.lists(st.sampled_from([
        "Host: x", "Content-Length: 3", "Content-Length: -1", "Content-Length: 99999999999999999999",
        "Transfer-Encoding: chunked", "Transfer-Encoding: gzip", "Connection: Upgrade", "Upgrade: tcp",
        "X-Registry-Config: " + base64.urlsafe_b64encode(b'{"r":{"username":"u"}}').decode(),
        "X-Registry-Config: !!!", "X-Registry-Config: bnVsbA", "X-Registry-Config: W10",
        "Content-Type: application/x-tar", "Bad Header", ": x", "X-" + "a" * 100 + ": y", "Host: \x7f"]),
        max_size=5))
    body = draw(st.sampled_from([b"", b"abc", b"3\r\nabc\r\n0\r\n\r\n", b"zz\r\n", b"\x00" * 10]))
    head = f"{method} {target} {version}\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"
    data = head.encode("utf-8", "surrogateescape") + body
    if draw(st.integers(0, 4)) == 0:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(max_size=4)) + data[at + 1:]
    return data


def _router() -> Router:
    router = Router()

    async def nothing(request: Any) -> None:
        return None

    for method, path in [("GET", "/_ping"), ("POST", "/build"), ("GET", "/images/json"),
                         ("GET", "/images/{name:.*}/json"), ("DELETE", "/images/{name:.*}")]:
        router.add(method, path, nothing)
    return router


class _Sink:
    """The writing half of a connection: what we answer is kept, not sent."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        return None

    async def wait_closed(self) -> None:
        return None


async def _serve_one(data: bytes) -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    conn = HTTPConnection(reader, _Sink())  # type: ignore[arg-type]
    request = await conn.next_request()
    if request is None:
        return
    path = request.path
    version_tuple(path.split("/")[1].removeprefix("v") if path.startswith("/v") else "1.44")
    _router().match(request.method, path.rstrip("/") or "/")
    options.BuildOptions.parse(request)
    await request.read_body(limit=1 << 16)


def check_http(data: bytes) -> None:
    asyncio.run(_serve_one(data))


TARGETS = [
    Target("dockerfile-parse", dockerfiles(), check_parse, (DockerfileError,), 60),
    Target("dockerfile-convert", st.tuples(dockerfiles(starts_with_from=True), st.sampled_from(CONVERT_OPTS)),
           check_convert, (ConvertError,), 50),
    Target("shell-expand", shell_words(), check_shell, (shell.ShellExpansionError,), 120),
    Target("dockerignore", ignore_files(), check_dockerignore, (PatternError,), 100),
    Target("llb-loader", definitions(), check_loader, (InvalidArgument,), 30),
    Target("filesync", packet_streams(), check_filesync, (DiffCopyError, RemoteError, ApplyError), 60),
    Target("tar-unpack", tar_archives(), check_tar, (SolveError,), 60),
    Target("image-layer", tar_archives(), check_image_layer, (LayerError,), 60),
    Target("context-tar", tar_archives(), check_context_tar, (contexttar.ContextError,), 60),
    Target("http-request", http_requests(), check_http, (HTTPError, ClientGone, BuildkitpyError), 150),
]
BY_NAME = {t.name: t for t in TARGETS}
