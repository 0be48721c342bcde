"""Progress printers against a recorded StatusResponse sequence (proto JSON, one message a line,
the shape of the ``Control/Status`` response bodies in the reference transcripts)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from google.protobuf import json_format

from buildkitpy.api import control_pb2
from buildkitpy.client.progress import (
    PlainPrinter,
    RawJSONPrinter,
    TTYPrinter,
    make_printer,
    solve_status_json,
)

DATA = Path(__file__).parent / "data"


def load_status(name: str) -> list[control_pb2.StatusResponse]:
    out = []
    for line in (DATA / name).read_text().splitlines():
        out.append(json_format.ParseDict(json.loads(line), control_pb2.StatusResponse(),
                                         ignore_unknown_fields=True))
    return out


def feed(printer, messages) -> None:
    for msg in messages:
        printer.update(msg)
    printer.done()


D = {i: "sha256:" + str(i) * 64 for i in range(1, 6)}

EXPECTED_PLAIN = """\
#1 [internal] load build definition from Dockerfile
#1 transferring dockerfile: 95B 0.0s done
#1 DONE 0.0s

#2 [internal] load metadata for docker.io/library/busybox:latest
#2 DONE 0.4s

#3 [1/3] FROM docker.io/library/busybox:latest
#3 CACHED

#4 [2/3] RUN echo hello
#4 0.123 hello
#4 0.123 world
#4 DONE 0.3s

#5 [3/3] RUN false
#5 WARN: something odd
#5 0.100 oops
#5 ERROR: process "/bin/sh -c false" did not complete successfully: exit code: 1
------
 > [3/3] RUN false:
0.100 oops
------
"""


def test_plain_output_of_a_failing_build():
    out = io.StringIO()
    feed(PlainPrinter(out), load_status("status_failing_build.jsonl"))
    assert out.getvalue() == EXPECTED_PLAIN


def _vertex(digest, name, started=None, completed=None, **kw):
    v = control_pb2.Vertex(digest=digest, name=name, **kw)
    if started is not None:
        v.started.FromNanoseconds(int(started * 1e9))
    if completed is not None:
        v.completed.FromNanoseconds(int(completed * 1e9))
    return control_pb2.StatusResponse(vertexes=[v])


def _log(digest, at, data: bytes):
    log = control_pb2.VertexLog(vertex=digest, stream=1, msg=data)
    log.timestamp.FromNanoseconds(int(at * 1e9))
    return control_pb2.StatusResponse(logs=[log])


def test_plain_interleaving_marks_the_interrupted_step():
    out = io.StringIO()
    p = PlainPrinter(out)
    p.update(_vertex(D[1], "a", started=100.0))
    p.update(_log(D[1], 100.25, b"first\n"))
    # another step starts and finishes while "a" is still running
    p.update(_vertex(D[2], "b", started=100.5, completed=100.7))
    p.update(_log(D[1], 101.0, b"second\n"))
    p.update(_vertex(D[1], "a", started=100.0, completed=101.5))
    p.done()
    assert out.getvalue() == (
        "#1 a\n"
        "#1 0.250 first\n"
        "#1 ...\n"
        "\n"
        "#2 b\n"
        "#2 DONE 0.2s\n"
        "\n"
        "#1 a\n"
        "#1 1.000 second\n"
        "#1 DONE 1.5s\n"
    )


def test_plain_ignores_vertexes_until_they_start_and_reports_cancel():
    out = io.StringIO()
    p = PlainPrinter(out)
    p.update(_vertex(D[1], "queued"))
    assert out.getvalue() == ""
    p.update(_vertex(D[1], "queued", started=1.0, completed=2.0, error="context canceled"))
    p.done()
    assert out.getvalue() == "#1 queued\n#1 CANCELED\n"


def test_plain_throttles_running_byte_progress():
    out = io.StringIO()
    p = PlainPrinter(out)
    p.update(_vertex(D[1], "pull", started=0.0))
    for current, at in ((1_000_000, 0.1), (1_010_000, 0.2), (6_000_000, 0.3)):
        st = control_pb2.VertexStatus(ID="sha256:abc", vertex=D[1], current=current, total=10_000_000)
        st.timestamp.FromNanoseconds(int(at * 1e9))
        st.started.FromNanoseconds(0)
        p.update(control_pb2.StatusResponse(statuses=[st]))
    lines = out.getvalue().splitlines()
    # the 1% step is skipped (< 5% and < 5 s since the last printed line)
    assert lines == ["#1 pull", "#1 sha256:abc 1.00MB / 10.00MB 0.1s", "#1 sha256:abc 6.00MB / 10.00MB 0.3s"]


def test_rawjson_uses_go_field_names_and_time_format():
    out = io.StringIO()
    feed(RawJSONPrinter(out), load_status("status_failing_build.jsonl"))
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 12
    assert lines[0] == {"vertexes": [{"digest": D[1],
                                      "name": "[internal] load build definition from Dockerfile",
                                      "started": "2026-11-27T18:31:32Z"}]}
    assert lines[1] == {"statuses": [{"id": "transferring dockerfile:", "vertex": D[1], "current": 95,
                                      "timestamp": "2026-11-27T18:31:32.02Z",
                                      "started": "2026-11-27T18:31:32Z",
                                      "completed": "2026-11-27T18:31:32.02Z"}]}
    assert lines[4]["vertexes"][0]["cached"] is True
    assert lines[4]["vertexes"][0]["inputs"] == [D[2]]
    assert lines[6] == {"logs": [{"vertex": D[4], "stream": 1, "data": "aGVsbG8Kd29y",
                                  "timestamp": "2026-11-27T18:31:32.723Z"}]}
    assert lines[10]["warnings"] == [{"vertex": D[5], "level": 1, "short": "c29tZXRoaW5nIG9kZA=="}]
    # Go's encoder escapes HTML characters; the error text has quotes only
    assert '"error":"process \\"/bin/sh -c false\\" did not complete' in out.getvalue().splitlines()[11]


def test_rawjson_escapes_like_go():
    msg = control_pb2.StatusResponse(vertexes=[control_pb2.Vertex(digest="d", name="a <b> & c")])
    out = io.StringIO()
    RawJSONPrinter(out).update(msg)
    assert out.getvalue() == '{"vertexes":[{"digest":"d","name":"a \\u003cb\\u003e \\u0026 c"}]}\n'
    assert solve_status_json(control_pb2.StatusResponse()) == {}


def test_auto_and_tty_modes_on_a_pipe(monkeypatch):
    monkeypatch.delenv("BUILDKIT_PROGRESS", raising=False)
    assert isinstance(make_printer("auto", io.StringIO()), PlainPrinter)
    with pytest.raises(ValueError, match="failed to get console"):
        make_printer("tty", io.StringIO())
    with pytest.raises(ValueError, match="invalid progress mode fancy"):
        make_printer("fancy", io.StringIO())
    monkeypatch.setenv("BUILDKIT_PROGRESS", "rawjson")
    assert isinstance(make_printer("auto", io.StringIO()), RawJSONPrinter)


class _FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_tty_view_redraws_and_ends_with_the_error_logs(monkeypatch):
    monkeypatch.delenv("BUILDKIT_PROGRESS", raising=False)
    out = _FakeTerminal()
    printer = make_printer("auto", out)
    assert isinstance(printer, TTYPrinter)
    printer._min_interval = 0  # redraw on every message
    feed(printer, load_status("status_failing_build.jsonl"))
    text = out.getvalue()
    assert "\x1b[" in text  # cursor movement for redraws
    final = text.rsplit("\x1b[2K[+] Building", 1)[1]
    assert "(5/5) FINISHED" in final.splitlines()[0]
    assert " => CACHED [1/3] FROM docker.io/library/busybox:latest" in final
    assert " => ERROR [3/3] RUN false" in final
    assert " => => transferring dockerfile: 95B" in final
    assert final.endswith("------\n > [3/3] RUN false:\n0.100 oops\n------\n")
