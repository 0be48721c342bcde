"""A subset of the Dockerfile conformance corpus built with ``DOCKER_BUILDKIT=0 docker build``
against the Engine API and compared (filesystem, config, platform, owners, through ``docker save``)
with the golden results recorded from real BuildKit. ``hack/docker_conformance.py`` runs all of it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import start_engine, stop_daemon

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "conformance"
CASES = ["copy-chown-numeric", "env-forms", "workdir-chain", "run-delete-whiteout", "fail-run-exit-3",
         "stage-copy-from-name", "arg-build-arg-override", "heredoc-run-basic",
         "stage-name-case-insensitive", "copy-symlink-preserved", "volume-json-and-plain",
         "parse-unknown-instruction-fails"]


class _CorpusRegistry:
    def __init__(self, port: int, data: Path) -> None:
        self.host = f"127.0.0.1:{port}"
        self.data = data

    def stop(self) -> None:
        pid_file = self.data / "registry.pid"
        if pid_file.exists():
            subprocess.run(["kill", pid_file.read_text().strip()], check=False)


@pytest.fixture(scope="module")
def corpus_engine(tmp_path_factory):
    if not (CORPUS / "conformance.py").exists():
        pytest.fail(f"the conformance corpus is not at {CORPUS}")
    from tests.conftest import free_port

    data = tmp_path_factory.mktemp("corpus-registry")
    port = free_port()
    subprocess.run([sys.executable, str(CORPUS / "conformance.py"), "registry", "--port", str(port),
                    "--data", str(data)], check=True, capture_output=True, timeout=120)
    registry = _CorpusRegistry(port, data)
    engine = start_engine(tmp_path_factory.mktemp("corpus-engine"), registry)  # type: ignore[arg-type]
    yield engine
    stop_daemon(engine.daemon)
    registry.stop()


def test_corpus_subset_matches_golden(corpus_engine):
    res = subprocess.run([sys.executable, str(REPO / "hack" / "docker_conformance.py"), "--docker-host",
                          corpus_engine.host, "--corpus", str(CORPUS), "--only", *CASES],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr + corpus_engine.daemon.log_text()[-3000:]
    assert f"{len(CASES)} passed, 0 failed, 0 skipped or classic" in res.stdout, res.stdout


@pytest.mark.slow
def test_whole_corpus_matches_golden(corpus_engine):
    """Every case the classic API can express (``hack/docker_conformance.py`` lists the others)."""
    res = subprocess.run([sys.executable, str(REPO / "hack" / "docker_conformance.py"), "--docker-host",
                          corpus_engine.host, "--corpus", str(CORPUS)],
                         capture_output=True, text=True, timeout=3600)
    assert res.returncode == 0, res.stdout + res.stderr + corpus_engine.daemon.log_text()[-3000:]
    print(res.stdout)
    assert " 0 failed," in res.stdout.splitlines()[-1], res.stdout
