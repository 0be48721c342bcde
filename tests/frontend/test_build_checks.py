"""Build checks during a normal build, and the subrequest plumbing, against a real daemon.

The expected warnings were recorded from real buildkitd v0.2x for the same Dockerfile (its
``VertexWarning`` messages: level, short text with the line, description as detail, URL, the
Dockerfile as source info and one range per line).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from buildkitpy.client import BuildkitError, Client, SolveOpt
from buildkitpy.client.solve import build

DOCKERFILE = "FROM scratch as Build\nENV a b\nCOPY <<EOF /x\n$UNDEF\nEOF\n"

# what real buildkitd sent for DOCKERFILE: (short, detail, url, ranges)
REAL_WARNINGS = [
    ("StageNameCasing: Stage name 'Build' should be lowercase (line 1)", "Stage names should be lowercase",
     "https://docs.docker.com/go/dockerfile/rule/stage-name-casing/", [1]),
    ("FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 1)",
     "The 'as' keyword should match the case of the 'from' keyword",
     "https://docs.docker.com/go/dockerfile/rule/from-as-casing/", [1]),
    ('LegacyKeyValueFormat: "ENV key=value" should be used instead of legacy "ENV key value" format (line 2)',
     "Legacy key/value format with whitespace separator should not be used",
     "https://docs.docker.com/go/dockerfile/rule/legacy-key-value-format/", [2]),
    ("UndefinedVar: Usage of undefined variable '$UNDEF' (line 3)",
     "Variables should be defined before their use",
     "https://docs.docker.com/go/dockerfile/rule/undefined-var/", [3, 4, 5]),
]


def _context(tmp_path: Path, dockerfile: str) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(dockerfile)
    return ctx


async def _build(addr: str, ctx: Path, attrs: dict[str, str] | None = None) -> tuple[list, list, dict]:
    warnings: list = []
    vertexes: list = []

    def on_status(st) -> None:  # noqa: ANN001
        warnings.extend(st.warnings)
        vertexes.extend(st.vertexes)

    opt = SolveOpt(frontend="dockerfile.v0", frontend_attrs=dict(attrs or {}),
                   local_dirs={"context": ctx, "dockerfile": ctx})
    async with Client.connect(addr) as client:
        res = await build(client, opt, on_status=on_status)
    return warnings, vertexes, res.gateway_metadata


def test_build_sends_the_warnings_buildkit_sends(daemon, tmp_path) -> None:
    ctx = _context(tmp_path, DOCKERFILE)
    warnings, vertexes, _ = asyncio.run(_build(daemon.unix_addr, ctx))
    got = [(w.short.decode(), [d.decode() for d in w.detail], w.url, [r.start.line for r in w.ranges])
           for w in warnings]
    assert got == [(s, [d], u, r) for s, d, u, r in REAL_WARNINGS]
    load = {v.digest for v in vertexes if v.name == "[internal] load build definition from Dockerfile"}
    for w in warnings:
        assert w.level == 1
        assert w.vertex in load
        assert (w.info.filename, w.info.language, w.info.data) == ("Dockerfile", "Dockerfile",
                                                                   DOCKERFILE.encode())
        assert all(r.end.line == r.start.line for r in w.ranges)


def test_check_error_true_fails_the_build(daemon, tmp_path) -> None:
    ctx = _context(tmp_path, "# check=error=true\nFROM scratch\nMAINTAINER me\nENV a b\n")
    with pytest.raises(BuildkitError, match="lint violation found for rules: MaintainerDeprecated, "
                                            "LegacyKeyValueFormat"):
        asyncio.run(_build(daemon.unix_addr, ctx))
    # the build arg replaces the directive
    asyncio.run(_build(daemon.unix_addr, ctx, {"build-arg:BUILDKIT_DOCKERFILE_CHECK": "error=false"}))


def test_bad_check_configuration_is_named(daemon, tmp_path) -> None:
    ctx = _context(tmp_path, "# check=skip=all;bogus=1\nFROM scratch\n")
    with pytest.raises(BuildkitError, match='failed to parse check options: invalid check option "bogus"'):
        asyncio.run(_build(daemon.unix_addr, ctx))
    (tmp_path / "2").mkdir()
    ctx2 = _context(tmp_path / "2", "FROM scratch\n")
    with pytest.raises(BuildkitError, match="failed to parse build-arg:BUILDKIT_DOCKERFILE_CHECK: "
                                            "failed to parse check option"):
        asyncio.run(_build(daemon.unix_addr, ctx2, {"build-arg:BUILDKIT_DOCKERFILE_CHECK": "error=maybe"}))


def test_describe_lists_the_subrequests(daemon, tmp_path) -> None:
    ctx = _context(tmp_path, "FROM scratch\n")
    _, _, md = asyncio.run(_build(daemon.unix_addr, ctx, {"requestid": "frontend.subrequests.describe"}))
    names = [r["name"] for r in json.loads(md["result.json"])]
    assert names == ["frontend.outline", "frontend.targets", "frontend.subrequests.describe"]
    assert md["result.txt"].decode().splitlines()[0].split() == ["NAME", "VERSION", "DESCRIPTION"]


def test_unknown_subrequest_and_cap_are_refused(daemon, tmp_path) -> None:
    ctx = _context(tmp_path, "FROM scratch\n")
    with pytest.raises(BuildkitError, match="unsupported request frontend.nope"):
        asyncio.run(_build(daemon.unix_addr, ctx, {"requestid": "frontend.nope"}))
    with pytest.raises(BuildkitError, match="unsupported frontend capability moby.buildkit.frontend.nope"):
        asyncio.run(_build(daemon.unix_addr, ctx, {"frontend.caps": "moby.buildkit.frontend.nope"}))


def test_lint_does_not_build(daemon, tmp_path) -> None:
    """A lint of a Dockerfile whose RUN would fail answers without running it."""
    ctx = _context(tmp_path, "FROM scratch\nRUN exit 1\nCMD echo\n")
    warnings, vertexes, md = asyncio.run(_build(daemon.unix_addr, ctx, {"requestid": "frontend.lint"}))
    assert md["result.statuscode"] == b"1"
    assert [w["ruleName"] for w in json.loads(md["result.json"])["warnings"]] == ["JSONArgsRecommended"]
    assert not [v for v in vertexes if "RUN" in v.name]


@pytest.mark.anyio
async def test_base_image_of_another_platform_is_reported() -> None:
    """``InvalidBaseImagePlatform`` (no docs page, no URL): the registry had no variant for the
    platform asked for. The image config comes from a resolver callback, as the converter gets it."""
    from buildkitpy import llb
    from buildkitpy.frontend.dockerfile import lint
    from buildkitpy.frontend.dockerfile.convert import convert

    async def resolve(ref: str, platform: llb.Platform) -> tuple[str, bytes]:
        config = {"architecture": "arm64", "os": "linux", "config": {},
                  "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "b" * 64]}}
        return "sha256:" + "a" * 64, json.dumps(config).encode()

    linter = lint.Linter(lint.LintConfig())
    await convert(b"FROM --platform=linux/amd64 busybox AS amd64\n", opts={}, resolve_image=resolve,
                  linter=linter, build_platform=llb.Platform("linux", "amd64"))
    assert [(w.rule.name, w.detail, w.lines, w.rule.url) for w in linter.warnings] == [
        ("InvalidBaseImagePlatform",
         'Base image busybox was pulled with platform "linux/arm64", expected "linux/amd64" for current '
         'build',
         (1, 1), ""),
    ]


def test_check_options_parse_as_buildkit_does() -> None:
    from buildkitpy.frontend.dockerfile import lint

    c = lint.parse_lint_options(" skip = A , B ;error=1;experimental=all")
    assert (c.skip, c.error, c.experimental_all) == (frozenset({"A", "B"}), True, True)
    assert lint.parse_lint_options("skip=all").skip_all
    for bad, message in [("skip", 'invalid check option "skip"'), ("nope=1", 'invalid check option "nope"'),
                         ("error=yes", 'failed to parse check option "error=yes"')]:
        with pytest.raises(lint.LintConfigError, match=message):
            lint.parse_lint_options(bad)
    # a check comment above an instruction: first one wins, a bad one is ignored
    root = lint.Linter(lint.LintConfig())
    assert root.for_comments(["some text", "check=skip=UndefinedVar"]).config.skip == {"UndefinedVar"}
    assert root.for_comments(["check=bogus"]).config == root.config
    assert root.for_comments(["CHECK = skip=X other words"]).config.skip == {"X"}
