"""The Dockerfile conformance corpus built through our frontend image (``gateway.v0`` with
``source=`` our image, pulled from a loopback registry and run in runc), compared with the results
recorded from real BuildKit. The default run builds a quick subset; ``-m slow`` builds all cases."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import BIN, REPO, Daemon, free_port, needs_root, start_daemon, stop_daemon

CONF = REPO.parent / "shared" / "conformance"
# a context copy, secrets (session attachables reached from inside the image) and a failing RUN
QUICK = ["copy-file", "mount-secret-target-and-env", "fail-run-exit-3"]

pytestmark = [needs_root]


@dataclass
class Setup:
    daemon: Daemon
    client: Path
    work: Path


@pytest.fixture(scope="module")
def through_image(tmp_path_factory) -> Iterator[Setup]:
    if not (CONF / "conformance.py").exists():
        pytest.fail(f"the conformance corpus is not at {CONF}")
    work = tmp_path_factory.mktemp("conformance-image")
    port = free_port()
    subprocess.run([sys.executable, str(CONF / "conformance.py"), "registry", "--port", str(port),
                    "--data", str(work / "registry")], check=True, capture_output=True)
    try:
        ref = f"127.0.0.1:{port}/buildkitpy/dockerfile:conformance"
        subprocess.run([sys.executable, str(REPO / "hack" / "frontend-image"), "--push", ref], check=True,
                       capture_output=True)
        config = work / "buildkitd.toml"
        config.write_text(f'[registry."docker.io"]\n  mirrors = ["127.0.0.1:{port}"]\n'
                          f'[registry."127.0.0.1:{port}"]\n  http = true\n')
        # buildctl's invocation with dockerfile.v0 replaced by our frontend image
        client = work / "client-through-image"
        client.write_text(f"#!{sys.executable}\n"
                          "import os, sys\n"
                          "args = []\n"
                          "for a in sys.argv[1:]:\n"
                          "    swap = ['gateway.v0', '--opt', 'source=' + %r]\n"
                          "    args += swap if a == 'dockerfile.v0' else [a]\n"
                          "os.execv(%r, [%r, *args])\n" % (ref, str(BIN / "buildkitpy"), "buildkitpy"))
        client.chmod(client.stat().st_mode | stat.S_IXUSR)
        daemon = start_daemon(work / "daemon", "--config", str(config))
        try:
            yield Setup(daemon, client, work)
        finally:
            stop_daemon(daemon)
    finally:
        pid = work / "registry" / "registry.pid"
        if pid.exists():
            os.kill(int(pid.read_text()), 15)


def _run_cases(setup: Setup, cases: list[str]) -> subprocess.CompletedProcess:
    golden = json.loads((CONF / "golden.json").read_text())
    expected = setup.work / f"golden-{len(cases)}.json"
    expected.write_text(json.dumps({k: v for k, v in golden.items() if k in cases}))
    results = setup.work / f"results-{len(cases)}.json"
    subprocess.run([sys.executable, str(CONF / "conformance.py"), "run", "--client", str(setup.client),
                    "--addr", setup.daemon.tcp_addr, "--out", str(results), "--only", *cases],
                   check=True, capture_output=True, timeout=3600)
    return subprocess.run([sys.executable, str(CONF / "conformance.py"), "compare", "--expected",
                           str(expected), "--actual", str(results)], capture_output=True, text=True)


def test_the_corpus_through_our_frontend_image_quick(through_image):
    res = _run_cases(through_image, QUICK)
    assert res.returncode == 0, res.stdout + res.stderr + through_image.daemon.log_text()[-3000:]
    assert f"conformance: {len(QUICK)} passed, 0 failed" in res.stdout, res.stdout


@pytest.mark.slow
def test_the_whole_corpus_through_our_frontend_image(through_image):
    cases = sorted(p.name for p in (CONF / "cases").iterdir() if p.is_dir())
    res = _run_cases(through_image, cases)
    assert res.returncode == 0, res.stdout + res.stderr
