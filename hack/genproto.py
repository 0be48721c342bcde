#!/usr/bin/env python3
"""Regenerate the Python protobuf/gRPC modules in buildkitpy/api from proto/buildkitpy/api.

Usage:
    python hack/genproto.py          # rewrite buildkitpy/api/*_pb2*.py[i]
    python hack/genproto.py --check  # exit 1 if the checked-in generated files are stale

Generation always happens in a scratch directory first, so the checked-in tree is only touched
once protoc has succeeded.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "proto"
PROTO_PKG = Path("buildkitpy") / "api"
OUT_PKG = REPO / PROTO_PKG
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")
INIT_TEXT = '"""Generated protobuf and gRPC modules (see hack/genproto.py)."""\n'


def _is_generated(name: str) -> bool:
    return name.endswith(GENERATED_SUFFIXES)


def _include_dirs() -> list[Path]:
    """Well-known types from grpc_tools, google/rpc/*.proto from googleapis-common-protos."""
    import grpc_tools

    wkt = Path(grpc_tools.__file__).resolve().parent / "_proto"
    if not (wkt / "google" / "protobuf" / "timestamp.proto").is_file():
        sys.exit(f"genproto: google/protobuf/timestamp.proto not found under {wkt}")
    for entry in sys.path:
        if entry and (Path(entry) / "google" / "rpc" / "status.proto").is_file():
            return [wkt, Path(entry).resolve()]
    sys.exit("genproto: google/rpc/status.proto not found on sys.path (install googleapis-common-protos)")


def _proto_files() -> list[str]:
    files = sorted((PROTO_ROOT / PROTO_PKG).glob("*.proto"))
    if not files:
        sys.exit(f"genproto: no .proto files under {PROTO_ROOT / PROTO_PKG}")
    return [f.relative_to(PROTO_ROOT).as_posix() for f in files]


def generate(out_dir: Path) -> dict[str, Path]:
    """Run protoc into out_dir; return {file name: path} of the generated modules."""
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}"]
    cmd += [f"-I{d}" for d in _include_dirs()]
    cmd += [f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", f"--pyi_out={out_dir}"]
    cmd += _proto_files()
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        sys.exit(f"genproto: protoc failed (exit {result.returncode})")
    gen_dir = out_dir / PROTO_PKG
    return {p.name: p for p in sorted(gen_dir.iterdir()) if _is_generated(p.name)}


def _current() -> dict[str, Path]:
    if not OUT_PKG.is_dir():
        return {}
    return {p.name: p for p in sorted(OUT_PKG.iterdir()) if _is_generated(p.name)}


def _stale(fresh: dict[str, Path]) -> list[str]:
    current = _current()
    problems = []
    for name in sorted(set(fresh) | set(current)):
        rel = (PROTO_PKG / name).as_posix()
        if name not in current:
            problems.append(f"missing: {rel}")
        elif name not in fresh:
            problems.append(f"orphaned (no .proto source): {rel}")
        elif not filecmp.cmp(fresh[name], current[name], shallow=False):
            problems.append(f"out of date: {rel}")
    init = OUT_PKG / "__init__.py"
    if not init.is_file():
        problems.append(f"missing: {(PROTO_PKG / '__init__.py').as_posix()}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="verify instead of writing; exit 1 if stale")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="genproto-") as tmp:
        fresh = generate(Path(tmp))
        if args.check:
            problems = _stale(fresh)
            if problems:
                print("genproto: generated code in buildkitpy/api is stale:", file=sys.stderr)
                for line in problems:
                    print(f"  {line}", file=sys.stderr)
                print("run `python hack/genproto.py` and commit the result", file=sys.stderr)
                return 1
            print(f"genproto: {len(fresh)} generated files up to date")
            return 0

        OUT_PKG.mkdir(parents=True, exist_ok=True)
        for name, path in _current().items():
            if name not in fresh:
                path.unlink()
        for name, path in fresh.items():
            dest = OUT_PKG / name
            if not dest.is_file() or not filecmp.cmp(path, dest, shallow=False):
                shutil.copyfile(path, dest)
        init = OUT_PKG / "__init__.py"
        if not init.is_file():
            init.write_text(INIT_TEXT)
        print(f"genproto: wrote {len(fresh)} files to {PROTO_PKG.as_posix()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
