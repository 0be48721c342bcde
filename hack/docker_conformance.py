#!/usr/bin/env python3
"""The Dockerfile conformance corpus through the Docker Engine API: every case built with the real
``docker`` CLI's classic builder (``DOCKER_BUILDKIT=0 docker build``) against a daemon's
``--docker-addr``, the image taken back with ``docker save``, and compared with the golden results
(filesystem, config, platform, owners) by the corpus' own ``compare_case``.

    hack/docker_conformance.py --docker-host unix:///…/docker.sock [--only CASE ...] [--out FILE]

The daemon must use the corpus' loopback registry as its docker.io mirror (``hack/conformance``
shows the toml). Cases the classic API cannot express are skipped and listed: build secrets and
extra named contexts (``docker build`` without BuildKit has no flags for them).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO.parent / "shared" / "conformance"


def load_corpus_module(corpus: Path):
    spec = importlib.util.spec_from_file_location("conformance", corpus / "conformance.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


# Where the classic builder's semantics differ from BuildKit's (the golden results): reported as
# CLASSIC, not counted as failures.
CLASSIC_DIFFERENCES = {
    "stage-target-skips-unreferenced": "the classic builder builds every stage before the target",
    "dockerignore-dockerfile-specific": "the docker CLI's classic path sends the context's .dockerignore "
                                        "(rewritten), not <Dockerfile>.dockerignore",
}


def unsupported(spec: dict) -> str:
    if spec.get("secrets"):
        return "build secrets need BuildKit (docker build --secret)"
    if spec.get("locals"):
        return "named contexts need BuildKit (docker build --build-context)"
    for key in spec.get("opts", {}):
        if not key.startswith("build-arg:") and key != "target":
            return f"frontend option {key} has no classic docker build flag"
    return ""


def flatten_layers(archive: Path, dest: Path) -> None:
    """The image's filesystem from its saved layers, whiteouts applied; files owned by 0:0 as the
    local exporter gives them to its (root) client."""
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())[0]
        for layer_name in manifest["Layers"]:
            data = tar.extractfile(layer_name).read()
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as layer:
                for member in layer:
                    name = member.name.lstrip("./").rstrip("/")
                    if not name:
                        continue
                    parent, _, leaf = name.rpartition("/")
                    target_dir = dest / parent if parent else dest
                    if leaf == ".wh..wh..opq":
                        if target_dir.is_dir():
                            for child in target_dir.iterdir():
                                _remove(child)
                        continue
                    if leaf.startswith(".wh."):
                        _remove(target_dir / leaf[4:])
                        continue
                    path = dest / name
                    if path.is_dir() and not path.is_symlink() and member.isdir():
                        os.chmod(path, member.mode)
                        continue
                    if os.path.lexists(path):
                        _remove(path)
                    member.uid = member.gid = 0
                    member.name = name
                    if member.islnk():
                        member.linkname = member.linkname.lstrip("./")
                    layer.extract(member, dest, set_attrs=True, numeric_owner=True, filter="fully_trusted")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def run_case(corpus_mod, case_dir: Path, docker_env: dict[str, str], timeout: int) -> dict:
    spec = json.loads((case_dir / "case.json").read_text()) if (case_dir / "case.json").exists() else {}
    expect = spec.get("expect", "ok")
    reason = unsupported(spec)
    if reason:
        return {"skipped": reason, "expect": expect}
    server = corpus_mod._serve_http(case_dir / "http") if spec.get("http") else None
    tmp = Path(tempfile.mkdtemp(prefix="docker-conf-"))
    try:
        case = corpus_mod.checkout_copy(case_dir, tmp / "case")
        context = case / "context"
        if not context.is_dir():
            context = tmp / "empty-context"
            context.mkdir()
        tag = f"conformance/{case_dir.name}:latest"
        cmd = ["docker", "build", "-q", "-t", tag, "-f", str(case / "Dockerfile")]
        for key, value in spec.get("opts", {}).items():
            if key.startswith("build-arg:"):
                cmd += ["--build-arg", f"{key[len('build-arg:'):]}={value}"]
            elif key == "target":
                cmd += ["--target", value]
        cmd.append(str(context))
        env = dict(docker_env, DOCKER_BUILDKIT="0")
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
            rc, err = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired:
            rc, err = -1, f"timed out after {timeout}s"
        result: dict = {"ok": rc == 0, "expect": expect}
        if rc != 0:
            result["error"] = corpus_mod._error_line(err, f"exit {rc}")
            return result
        archive = tmp / "image.tar"
        subprocess.run(["docker", "save", "-o", str(archive), tag], env=env, check=True, timeout=timeout)
        fs = tmp / "fs"
        fs.mkdir()
        flatten_layers(archive, fs)
        result["fs"] = corpus_mod.tree_manifest(fs)
        result.update(corpus_mod.oci_summary(archive))
        return result
    finally:
        if server:
            server.shutdown()
            server.server_close()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--docker-host", required=True)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--only", nargs="*", default=[])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--timeout", type=int, default=300)
    args = ap.parse_args()
    corpus_mod = load_corpus_module(args.corpus)
    golden = json.loads((args.corpus / "golden.json").read_text())
    names = args.only or sorted(golden)
    docker_config = Path(tempfile.mkdtemp(prefix="docker-conf-config-"))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(docker_config),
           "DOCKER_HOST": args.docker_host, "DOCKER_CONFIG": str(docker_config)}
    results, passed, failed, skipped = {}, 0, 0, 0
    for name in names:
        got = run_case(corpus_mod, args.corpus / "cases" / name, env, args.timeout)
        results[name] = got
        if "skipped" in got:
            skipped += 1
            print(f"SKIP {name}: {got['skipped']}", flush=True)
            continue
        ok, problems = corpus_mod.compare_case(golden[name], got)
        if not ok and name in CLASSIC_DIFFERENCES:
            skipped += 1
            print(f"CLASSIC {name}: {CLASSIC_DIFFERENCES[name]}", flush=True)
            continue
        passed += ok
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'} {name}", flush=True)
        for problem in problems:
            print(f"     {problem}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, sort_keys=True))
    print(f"docker conformance: {passed} passed, {failed} failed, {skipped} skipped or classic")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
