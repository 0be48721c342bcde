"""Dockerfile frontend speed: parse + convert of a generated 500-instruction Dockerfile, and (given a
conformance results file) the corpus's total cold and warm wall time.

    .venv/bin/python hack/bench/bench_dockerfile.py [-n 500] [--results RESULTS.json]

``hack/conformance`` leaves its results in /tmp/buildkitpy-conformance-results.json; each case
records the seconds of its first (cold) local build, its oci build and a repeated (warm) build.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from buildkitpy.frontend.dockerfile.convert import convert
from buildkitpy.frontend.dockerfile.instructions import parse_dockerfile

PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_CONFIG = json.dumps({"architecture": "amd64", "os": "linux",
                          "rootfs": {"type": "layers", "diff_ids": []},
                          "config": {"Env": [PATH], "Cmd": ["sh"]}}).encode()


def dockerfile(n: int) -> bytes:
    """Three stages mixing every common instruction, ``n`` instructions in all."""
    kinds = [
        "RUN --mount=type=cache,target=/root/.cache echo step {i} && touch /f{i}",
        "COPY src/file{i}.txt /app/file{i}.txt",
        "ENV VAR{i}=value{i} PATH=$PATH:/opt/bin{i}",
        "WORKDIR /work/{i}",
        "LABEL com.example.label{i}=\"v{i}\"",
        "ARG A{i}=default{i}",
        "RUN [\"/bin/sh\", \"-c\", \"echo exec {i}\"]",
        "EXPOSE {port}/tcp",
        "USER {uid}",
        "ADD --chmod=644 src/file{i}.txt /added/{i}",
    ]
    lines = ["# syntax-free benchmark Dockerfile", "ARG BASE=busybox", "FROM $BASE AS build"]
    for i in range(n - 6):
        if i == (n - 6) // 2:
            lines.append("FROM busybox AS second")
        lines.append(kinds[i % len(kinds)].format(i=i, port=1000 + i, uid=1000 + i % 5))
    lines += ["FROM scratch", "COPY --from=build /app /app", "COPY --from=second /added /added"]
    return ("\n".join(lines) + "\n").encode()


async def resolve(ref, platform):
    return "sha256:" + "0" * 64, BASE_CONFIG


async def convert_once(data: bytes) -> float:
    t = time.perf_counter()
    await convert(data, opts={}, resolve_image=resolve, session_id="bench")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--results", help="a conformance results.json for corpus wall times")
    args = ap.parse_args()
    data = dockerfile(args.n)
    parse_times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        parse_dockerfile(data)
        parse_times.append(time.perf_counter() - t)
    convert_times = [asyncio.run(convert_once(data)) for _ in range(args.repeat)]
    print(f"{args.n}-instruction Dockerfile ({len(data)} bytes), {args.repeat} runs:")
    print(f"  parse           median {statistics.median(parse_times) * 1000:7.1f} ms")
    print(f"  parse + convert median {statistics.median(convert_times) * 1000:7.1f} ms  "
          f"(min {min(convert_times) * 1000:.1f} ms)")
    if args.results:
        results = json.load(open(args.results))
        secs = [r.get("seconds", {}) for r in results.values()]
        cold = sum(s.get("local", 0) for s in secs)
        oci = sum(s.get("oci", 0) for s in secs)
        warm = sum(s.get("warm", 0) for s in secs)
        print(f"corpus ({len(results)} cases): cold local builds {cold:.1f} s, oci exports {oci:.1f} s, "
              f"warm rebuilds {warm:.1f} s")


if __name__ == "__main__":
    main()
