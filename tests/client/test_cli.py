"""The CLI's pure parts: tables (from recorded daemon answers), build option assembly, the
Control.Solve request, metadata files, and exit codes for bad or unsupported options."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path

import pytest
from google.protobuf import json_format

from buildkitpy.api import control_pb2, ops_pb2
from buildkitpy.client import cli
from buildkitpy.client.options import ExportEntry, OptionError
from buildkitpy.client.solve import SolveOpt, ignore_cache_everywhere, local_names_in, solve_request
from buildkitpy.client.textformat import (
    TabWriter,
    format_bytes,
    format_bytes_short,
    format_go_duration,
    format_go_time,
    parse_go_duration,
)

TRANSCRIPT = Path(__file__).resolve().parents[2].parent / "shared" / "reference/transcripts/buildctl.jsonl"


def _recorded(method: str, message):
    if not TRANSCRIPT.exists():
        pytest.fail(f"reference transcript {TRANSCRIPT} is missing")
    for line in TRANSCRIPT.read_text().splitlines():
        d = json.loads(line)
        if d["ev"] == "resp" and d["m"].endswith(method):
            return json_format.ParseDict(d["body"]["msg"], message, ignore_unknown_fields=True)
    raise AssertionError(f"no {method} response recorded")


def test_units_and_durations_like_go():
    assert [format_bytes(n) for n in (0, 123, 999, 1000, 1234, 662604550, 10**11)] == [
        "0B", "123B", "999B", "1.00kB", "1.23kB", "662.60MB", "100.00GB"]
    assert [format_bytes_short(n) for n in (512000000, 10**10, 51 * 10**9, 1500, 12)] == [
        "512MB", "10GB", "51GB", "1.5kB", "12B"]
    assert format_go_duration(172800000000000) == "48h0m0s"
    assert format_go_duration(90 * 10**9) == "1m30s"
    assert format_go_duration(1500 * 10**6) == "1.5s"
    assert parse_go_duration("1h30m") == 5400 * 10**9
    assert parse_go_duration("1.5h") == 5400 * 10**9
    assert parse_go_duration("0") == 0
    with pytest.raises(ValueError, match="missing unit"):
        parse_go_duration("10")


def test_tabwriter_blocks_end_at_lines_without_cells():
    out = io.StringIO()
    tw = TabWriter(out, 1, 8, 1, "\t")
    tw.write("ID:\tx\nPlatforms:\ty\nLabels:\n\tk:\tv\n\tlonger-key:\tv\n")
    tw.flush()
    assert out.getvalue() == "ID:\t\tx\nPlatforms:\ty\nLabels:\n\tk:\t\tv\n\tlonger-key:\tv\n"
    out = io.StringIO()
    tw = TabWriter(out, 0, 0, 1, " ")
    tw.write("BuildKit:\ta\nDockerfile:\tb\n")
    tw.flush()
    assert out.getvalue() == "BuildKit:   a\nDockerfile: b\n"


def test_workers_table_from_a_recorded_answer():
    workers = _recorded("ListWorkers", control_pb2.ListWorkersResponse()).record
    out = io.StringIO()
    cli.print_workers(workers, out, verbose=False)
    assert out.getvalue() == ("ID\t\t\t\tPLATFORMS\n"
                              "91wh19w8dqz03g2jdhf43x4yl\tlinux/amd64,linux/amd64/v2,linux/amd64/v3,linux/386\n")


def test_workers_verbose_from_a_recorded_answer():
    workers = _recorded("ListWorkers", control_pb2.ListWorkersResponse()).record
    out = io.StringIO()
    cli.print_workers(workers, out, verbose=True)
    lines = out.getvalue().split("\n")
    assert lines[:5] == [
        "ID:\t\t91wh19w8dqz03g2jdhf43x4yl",
        "Platforms:\tlinux/amd64,linux/amd64/v2,linux/amd64/v3,linux/386",
        "BuildKit:\tgithub.com/moby/buildkit v0.32.0-57-g73ed6825c 73ed6825c4b7569379ef89df0aedcdbe64473d31",
        "Dockerfile:\t1.26.0-57-g73ed6825c",
        "Labels:",
    ]
    assert "\torg.mobyproject.buildkit.worker.executor:\t\toci" in lines
    rule0 = lines.index("GC Policy rule#0:")
    assert lines[rule0 + 1:rule0 + 5] == [
        "\tAll:\t\t\tfalse",
        "\tFilters:\t\ttype==source.local type==exec.cachemount type==source.git.checkout",
        "\tKeep duration:\t\t48h0m0s",
        "\tMaximum used space:\t512MB",
    ]
    rule1 = lines.index("GC Policy rule#1:")
    assert lines[rule1 + 2:rule1 + 6] == [
        "\tKeep duration:\t\t1440h0m0s", "\tReserved space:\t\t10GB",
        "\tMinimum free space:\t51GB", "\tMaximum used space:\t100GB"]
    assert lines[-2:] == ["", ""]


def test_info_line():
    out = io.StringIO()
    resp = _recorded("Info", control_pb2.InfoResponse())
    cli.print_info(resp.buildkitVersion, out)
    assert out.getvalue() == ("BuildKit:   github.com/moby/buildkit v0.32.0-57-g73ed6825c "
                              "73ed6825c4b7569379ef89df0aedcdbe64473d31\n"
                              "Dockerfile: 1.26.0-57-g73ed6825c\n")


def test_du_table_and_summary_from_a_recorded_answer():
    records = list(_recorded("DiskUsage", control_pb2.DiskUsageResponse()).record)
    out = io.StringIO()
    tw = TabWriter(out, 1, 8, 1, "\t")
    cli.print_usage_table(records[:3], tw)
    cli.print_usage_summary(records, tw)
    lines = out.getvalue().split("\n")
    assert lines[0] == "ID" + "\t" * 9 + "RECLAIMABLE\tSIZE\t\tLAST ACCESSED"
    assert lines[1] == "4qw31x43yjtvwpy3cywba2h6f".ljust(71) + "\ttrue       \t662.60MB\t"
    assert lines[3] == "ee24h54agqr0j4qh9gxycmecl*".ljust(71) + "\ttrue       \t24.58kB\t\t"
    assert lines[4:] == ["Reclaimable:\t1.07GB", "Total:\t\t1.07GB", ""]


def test_du_verbose_record():
    records = list(_recorded("DiskUsage", control_pb2.DiskUsageResponse()).record)
    out = io.StringIO()
    cli.print_usage_verbose(records[:1], TabWriter(out, 1, 8, 1, "\t"))
    lines = out.getvalue().split("\n")
    assert lines[0] == "ID:\t\t4qw31x43yjtvwpy3cywba2h6f"
    assert "Created at:\t2026-11-27 18:30:06.727405833 +0000 UTC" in lines
    assert "Description:\tmount / from exec /bin/sh -c seq 1 60000000 > /big" in lines
    assert "Usage count:\t4" in lines
    assert format_go_time(records[0].LastUsedAt) == "2026-11-27 18:30:24.305365502 +0000 UTC"


# -- build ---------------------------------------------------------------------------------------

def _build_args(*argv: str):
    return cli.build_parser().parse_args(["build", *argv])


def test_build_options_assemble_a_solve_opt(tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    secret = tmp_path / "s.txt"
    secret.write_text("hunter2")
    args = _build_args("--frontend", "dockerfile.v0", "--local", f"context={tmp_path}",
                       "--local", f"dockerfile={tmp_path}", "--opt", "target=final",
                       "--output", f"type=local,dest={tmp_path}/out", "-o", f"type=tar,dest={tmp_path}/o.tar",
                       "--secret", f"id=s,src={secret}", "--allow", "network.host", "--no-cache")
    opt = cli.parse_build_options(args)
    assert opt.frontend == "dockerfile.v0"
    assert opt.frontend_attrs == {"target": "final", "no-cache": ""}
    assert opt.local_dirs == {"context": tmp_path, "dockerfile": tmp_path}
    assert opt.secrets == {"s": b"hunter2"}
    assert opt.entitlements == ["network.host"]
    assert [(e.type, e.attrs) for e in opt.exports] == [("local", {}), ("tar", {})]


def test_solve_request_mirrors_buildctl():
    opt = SolveOpt(exports=[ExportEntry("local", {}, output_dir=Path("/o")),
                            ExportEntry("image", {"name": "x", "push": "true"})],
                   frontend="dockerfile.v0", frontend_attrs={"target": "t"}, entitlements=["network.host"])
    opt.cache_imports = [cli.options.CacheOptionsEntry("registry", {"ref": "r"})]
    req = solve_request(opt, ref="r" * 25, session_id="s" * 25, definition=None, gateway=True)
    assert req.Ref == "r" * 25 and req.Session == "s" * 25
    assert req.Frontend == ""  # the gateway flow clears it; the frontend goes to LLBBridge.Solve
    assert dict(req.FrontendAttrs) == {"target": "t",
                                       "cache-imports": '[{"Type":"registry","Attrs":{"ref":"r"}}]'}
    assert [(e.Type, dict(e.Attrs)) for e in req.Exporters] == [
        ("local", {}), ("image", {"name": "x", "push": "true"})]
    assert req.ExporterDeprecated == "local" and dict(req.ExporterAttrsDeprecated) == {}
    assert list(req.Entitlements) == ["network.host"]
    direct = solve_request(opt, ref="r", session_id="s", definition=None, gateway=False)
    assert direct.Frontend == "dockerfile.v0"


def _definition(*identifiers: str) -> ops_pb2.Definition:
    d = ops_pb2.Definition()
    for ident in identifiers:
        getattr(d, "def").append(ops_pb2.Op(source=ops_pb2.SourceOp(identifier=ident)).SerializeToString())
    return d


def test_llb_from_stdin_and_no_cache():
    d = _definition("local://context", "docker-image://docker.io/library/busybox:latest")
    parsed = cli.read_definition(io.BytesIO(d.SerializeToString()), no_cache=True)
    assert local_names_in(parsed) == ["context"]
    for op in getattr(parsed, "def"):
        assert parsed.metadata["sha256:" + hashlib.sha256(op).hexdigest()].ignore_cache
    with pytest.raises(OptionError, match="empty definition sent to build"):
        cli.read_definition(io.BytesIO(b""), no_cache=False)
    with pytest.raises(OptionError, match="failed to parse input"):
        cli.read_definition(io.BytesIO(b"\xff\xff\xff"), no_cache=False)
    ignore_cache_everywhere(d)
    assert len(d.metadata) == 2


def test_metadata_file_inlines_base64_json_objects():
    desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:40", "size": 856}
    resp = {"containerimage.digest": "sha256:402c",
            "containerimage.descriptor": base64.b64encode(json.dumps(desc).encode()).decode(),
            "image.name": "a<b>"}
    text = cli.metadata_json(resp)
    assert json.loads(text) == {"containerimage.descriptor": desc, "containerimage.digest": "sha256:402c",
                                "image.name": "a<b>"}
    assert "\\u003cb\\u003e" in text
    assert text.startswith('{\n  "containerimage.descriptor": {\n    "mediaType"')


@pytest.mark.parametrize("flags,message", [
    (["--export-cache", "type=azblob,name=c"], "--export-cache type=azblob is not supported yet"),
    (["--import-cache", "type=azblob,name=r"], "--import-cache type=azblob is not supported yet"),
    (["--oci-layout", "x=/tmp"], "--oci-layout is not supported yet"),
    (["--format", "x"], None),
])
def test_unsupported_build_options_exit_2(flags, message, capsys):
    if message is None:  # --format is not a build flag: argparse's usage error, also exit 2
        with pytest.raises(SystemExit) as info:
            cli.main(["--addr", "unix:///nonexistent.sock", "build", "--frontend", "dockerfile.v0", *flags])
        assert info.value.code == 2
        return
    rc = cli.main(["--addr", "unix:///nonexistent.sock", "build", "--frontend", "dockerfile.v0", *flags])
    assert rc == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_bad_options_exit_1_with_buildctl_messages(capsys):
    rc = cli.main(["--addr", "unix:///nonexistent.sock", "build", "--frontend", "dockerfile.v0",
                   "--output", "dest=/x"])
    assert rc == 1
    assert capsys.readouterr().err == "error: --output requires type=<type>\n"
    rc = cli.main(["--addr", "unix:///nonexistent.sock", "build", "--frontend", "x", "--allow", "root"])
    assert (rc, capsys.readouterr().err) == (1, "error: unknown entitlement root\n")
    rc = cli.main(["--addr", "docker-container://buildkitd", "debug", "workers"])
    assert rc == 2
    assert "not supported yet" in capsys.readouterr().err


def test_unreachable_daemon_is_a_clean_error(tmp_path, capsys):
    rc = cli.main(["--addr", f"unix://{tmp_path}/none.sock", "debug", "workers"])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Unavailable: ") and err.count("\n") == 1
