"""Rebuild LLB that real BuildKit's Dockerfile frontend produced (recorded in
/work/shared/conformance/llb) with our builder, and require byte-identical definitions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import json_format

from buildkitpy import llb
from buildkitpy.api import ops_pb2

RECORDINGS = Path(__file__).resolve().parents[2].parent / "shared" / "conformance/llb"
BUSYBOX = "busybox:latest@sha256:3b1efa85b9d44689801e27a43cf5393658337c15f2387e5f0f46c2afe990ccbb"
BUSYBOX_FULL = "docker.io/library/" + BUSYBOX
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DAEMON_CAPS = {"exec.meta.setsdefaultpath", "file.base", "source.image", "source.local"}
COPY_DEFAULTS = dict(follow_symlinks=True, copy_dir_contents=True, create_dest_path=True,
                     allow_wildcard=True, allow_empty_wildcard=True)

pytestmark = pytest.mark.skipif(not RECORDINGS.is_dir(), reason="conformance recordings not present")


def recorded(case: str) -> ops_pb2.Definition:
    data = json.loads((RECORDINGS / f"{case}.json").read_text())
    return json_format.ParseDict(data["definition"], ops_pb2.Definition())


class Dockerfile:
    """Just enough of the Dockerfile frontend's conventions to replay a recording."""

    def __init__(self, case: str, session: str) -> None:
        self.expected = recorded(case)
        self.session = session
        dockerfile = llb.local("dockerfile", session_id=session, shared_key_hint="dockerfile", differ="none",
                               follow_paths=["Dockerfile", "Dockerfile.dockerignore", "dockerfile"],
                               custom_name="[internal] load build definition from Dockerfile")
        self.source_map = llb.SourceMap("Dockerfile", self.expected.Source.infos[0].data, "Dockerfile",
                                        state=dockerfile)

    def at(self, *lines: int) -> dict:
        return {"locations": [self.source_map.location([(n, n) for n in lines])]}

    def context(self, **kw) -> llb.State:
        return llb.local("context", session_id=self.session, shared_key_hint="context",
                         custom_name="[internal] load build context", **kw)

    def from_busybox(self, step: str, line: int, command: str = "FROM busybox") -> llb.State:
        return llb.image(BUSYBOX, platform=llb.Platform("linux", "amd64"),
                         description={"com.docker.dockerfile.v1.command": command},
                         custom_name=f"{step} FROM {BUSYBOX_FULL}", **self.at(line)
                         ).add_env("PATH", DEFAULT_PATH)

    def run(self, st: llb.State, step: str, line: int, flags: str, script: str, **kw) -> llb.State:
        command = f"RUN {flags}{script}"
        return st.run(["/bin/sh", "-c", script], custom_name=f"{step} {command}",
                      description={"com.docker.dockerfile.v1.command": command}, **self.at(line), **kw).root()

    def check(self, st: llb.State) -> None:
        got = llb.marshal(st, platform="linux/amd64", caps=DAEMON_CAPS)
        assert list(getattr(got, "def")) == list(getattr(self.expected, "def"))
        assert dict(got.metadata) == dict(self.expected.metadata)
        assert got.Source == self.expected.Source
        want = self.expected.SerializeToString(deterministic=True)
        assert got.SerializeToString(deterministic=True) == want


def test_copy_file() -> None:
    df = Dockerfile("copy-file", "1in758cwhvehzocgwwd9fqjhw")
    ctx = df.context(follow_paths=["hello.txt", "tool.sh"])
    st = df.from_busybox("[1/4]", 1)
    for step, line, src, dest in (("[2/4]", 2, "hello.txt", "/hello.txt"),
                                  ("[3/4]", 3, "hello.txt", "/renamed"),
                                  ("[4/4]", 4, "tool.sh", "/usr/local/bin/tool")):
        st = st.file(llb.copy(ctx, "/" + src, dest, **COPY_DEFAULTS),
                     custom_name=f"{step} COPY {src} {dest}", **df.at(line))
    df.check(st)


def test_copy_chown_numeric_and_chmod() -> None:
    df = Dockerfile("copy-chown-numeric", "xh0lgayvur895nlc7nz5ctcnx")
    ctx = df.context(follow_paths=["a.txt", "d"])
    st = df.from_busybox("[1/3]", 1)
    st = st.file(llb.copy(ctx, "/a.txt", "/owned/a.txt", chown="1000:1001", **COPY_DEFAULTS),
                 custom_name="[2/3] COPY --chown=1000:1001 a.txt /owned/a.txt", **df.at(2))
    st = st.file(llb.copy(ctx, "/d", "/owned-dir/", chown="1234", **COPY_DEFAULTS),
                 custom_name="[3/3] COPY --chown=1234 d /owned-dir/", **df.at(3))
    df.check(st)


def test_workdir_chain_and_run() -> None:
    df = Dockerfile("workdir-chain", "hiszstouxewezno4frm9h8rtw")
    st = df.from_busybox("[1/6]", 1).add_env("BASE", "/srv")
    for step, line, workdir in (("[2/6]", 3, "/abs"), ("[3/6]", 4, "rel"), ("[4/6]", 5, "../sibling"),
                                ("[5/6]", 6, "/srv/app")):
        st = st.dir(workdir)
        st = st.file(llb.mkdir(st.get_dir(), 0o755, make_parents=True),
                     custom_name=f"{step} WORKDIR {workdir}",
                     **df.at(line))
    st = df.run(st, "[6/6]", 7, "", "pwd > /out")
    df.check(st)


def test_mount_bind_from_stage() -> None:
    df = Dockerfile("mount-bind-from-stage", "i6vs4baw4jezxm2ru2z8vufvc")
    tools = df.from_busybox("[tools 1/2]", 1, "FROM busybox AS tools")
    tools = df.run(tools, "[tools 2/2]", 2, "", "mkdir /t && echo tool-data > /t/data")
    st = df.from_busybox("[stage-1 1/2]", 3)
    st = df.run(st, "[stage-1 2/2]", 4, "--mount=type=bind,from=tools,source=/t,target=/mnt/t ",
                "cp /mnt/t/data /copied", mounts=[llb.bind("/mnt/t", tools, selector="/t", readonly=True)])
    df.check(st)


@pytest.mark.parametrize("case,session,flags,script,mount", [
    ("mount-cache-target", "bd18b9kn2kr5bn9zulkdqkau4", "--mount=type=cache,target=/var/cache/conf-target ",
     "sh -c 'echo cached > /var/cache/conf-target/f && cp /var/cache/conf-target/f /result'",
     llb.cache("/var/cache/conf-target", "//var/cache/conf-target")),
    ("mount-secret-file", "1ndb9ms8uz2bifsemq3mr8lrd", "--mount=type=secret,id=token ",
     "cat /run/secrets/token > /out && stat -c '%a %u %g %s' /run/secrets/token > /stat",
     llb.secret("token", target="/run/secrets/token", optional=True)),
])
def test_run_with_mount(case: str, session: str, flags: str, script: str,
                        mount: llb.Mount | llb.Secret) -> None:
    df = Dockerfile(case, session)
    st = df.run(df.from_busybox("[stage-0 1/2]", 1), "[stage-0 2/2]", 2, flags, script, mounts=[mount])
    df.check(st)


def test_run_network_none() -> None:
    df = Dockerfile("run-network-none", "lmfb32zki4anhhfk5q6ub06xn")
    script = "wc -l < /proc/net/dev > /out && cut -d: -f1 /proc/net/dev | tail -n +3 | tr -d ' ' > /ifaces"
    st = df.run(df.from_busybox("[1/2]", 1), "[2/2]", 2, "--network=none ", script, network="none")
    df.check(st)


def test_add_http_dedupes_identical_sources_and_merges_their_metadata() -> None:
    df = Dockerfile("add-http-url", "p6g29fvm5ocu0lbq4ke5x7yn8")
    url, payload = "http://127.0.0.1:8765/remote.txt", "http://127.0.0.1:8765/payload.txt"
    checksum = "sha256:e71a1c2c4dfcbe8459c6252bb7481039f6ed338ea77d3edfca956d06b35fb050"
    st = df.from_busybox("[1/4]", 1)
    steps = [("[2/4]", 2, url, "/downloaded/", None, f"ADD {url} /downloaded/"),
             ("[3/4]", 3, url, "/renamed.txt", None, f"ADD {url} /renamed.txt"),
             ("[4/4]", 4, payload, "/verified.txt", checksum,
              f"ADD --checksum={checksum} {payload} /verified.txt")]
    for step, line, src_url, dest, digest, command in steps:
        src = llb.http(src_url, filename=src_url.rsplit("/", 1)[1], checksum=digest,
                       description={"com.docker.dockerfile.v1.command": ""}, custom_name=f"{step} {command}")
        st = st.file(llb.copy(src, "/" + src_url.rsplit("/", 1)[1], dest, create_dest_path=True),
                     custom_name=f"{step} {command}", **df.at(line))
    df.check(st)


def test_heredoc_copy_mkfile_on_scratch() -> None:
    df = Dockerfile("heredoc-copy-file", "bj8yaeie7q165chlcc5ua0dh4")
    heredoc = llb.scratch().file(llb.mkfile("/EOT", 0o644, b"hello builder\nsecond line\n"),
                                 custom_name="[internal] preparing inline document")
    st = df.from_busybox("[1/2]", 1)
    st = st.file(llb.copy(heredoc, "/EOT", "/etc/greeting", create_dest_path=True),
                 custom_name="[2/2] COPY <<EOT /etc/greeting", **df.at(3, 4, 5, 6))
    df.check(st)


def test_dockerignore_excludes() -> None:
    df = Dockerfile("dockerignore-patterns", "8vie0lwdyu52f50lam547spxs")
    ctx = df.context(exclude_patterns=["*.scratch", "notes/**", "!notes/keep.txt", "**/gen", "docs/*.md",
                                       "!docs/README.md", "Dockerfile", ".dockerignore"])
    st = df.from_busybox("[1/2]", 1).file(llb.copy(ctx, "/", "/ctx/", **COPY_DEFAULTS),
                                          custom_name="[2/2] COPY . /ctx/", **df.at(2))
    df.check(st)


def test_serializer_reproduces_every_recorded_op() -> None:
    """Go puts the ``op`` oneof after platform/constraints; re-encoding every recorded op must give the
    recorded bytes back."""
    from buildkitpy.llb.vertex import serialize_op

    count = 0
    for path in sorted(RECORDINGS.glob("*.json")):
        definition = json.loads(path.read_text()).get("definition")
        if not definition:
            continue
        for data in getattr(json_format.ParseDict(definition, ops_pb2.Definition()), "def"):
            assert serialize_op(ops_pb2.Op.FromString(data)) == data, path.name
            count += 1
    assert count > 100
