"""CacheOptions as Control.Solve receives them: checked before any work, with clear errors."""

from __future__ import annotations

import json

import pytest

from buildkitpy.api import control_pb2
from buildkitpy.errors import InvalidArgument, Unimplemented
from buildkitpy.remotecache.control import CacheRun


def opts(exports=(), imports=()) -> control_pb2.CacheOptions:
    return control_pb2.CacheOptions(
        Exports=[control_pb2.CacheOptionsEntry(Type=t, Attrs=a) for t, a in exports],
        Imports=[control_pb2.CacheOptionsEntry(Type=t, Attrs=a) for t, a in imports],
    )


def test_gha_is_refused_clearly_both_ways():
    with pytest.raises(Unimplemented, match="type=gha is not supported by buildkitpy"):
        CacheRun.from_request(opts(exports=[("gha", {})]), {})
    with pytest.raises(Unimplemented, match="type=gha is not supported by buildkitpy"):
        CacheRun.from_request(opts(imports=[("gha", {"scope": "x"})]), {})


@pytest.mark.parametrize(
    "entry,message",
    [
        (("registry", {}), "registry cache needs ref="),
        (("registry", {"ref": "r/x", "mode": "all"}), "invalid cache export mode 'all'"),
        (
            ("registry", {"ref": "r/x", "image-manifest": "true", "oci-mediatypes": "false"}),
            "needs oci-mediatypes",
        ),
        (("registry", {"ref": "r/x", "compression": "lz4"}), "unsupported layer compression"),
        (("local", {}), "local cache exporter requires dest"),
        (("s3", {"region": "r"}), r"bucket \(\$AWS_BUCKET\) not set"),
        (("azblob", {}), "unknown cache exporter type 'azblob'"),
    ],
)
def test_bad_exports_fail_before_the_build(entry, message, monkeypatch):
    monkeypatch.delenv("AWS_BUCKET", raising=False)
    with pytest.raises(InvalidArgument, match=message):
        CacheRun.from_request(opts(exports=[entry]), {})


def test_imports_from_frontend_attrs_deduplicated_and_inline_from_the_build_arg():
    run = CacheRun.from_request(
        opts(exports=[("registry", {"ref": "r/x"})], imports=[("registry", {"ref": "r/a"})]),
        {
            "cache-imports": json.dumps(
                [
                    {"Type": "registry", "Attrs": {"ref": "r/a"}},
                    {"Type": "local", "Attrs": {"src": "/c", "digest": "sha256:" + "1" * 64}},
                ]
            ),
            "cache-from": "r/b, r/a",
            "build-arg:BUILDKIT_INLINE_CACHE": "1",
        },
    )
    assert [(e.type, dict(e.attrs)) for e in run.imports] == [
        ("registry", {"ref": "r/a"}),
        ("local", {"src": "/c", "digest": "sha256:" + "1" * 64}),
        ("registry", {"ref": "r/b"}),
    ]
    assert run.inline and [e.type for e in run.exports] == ["registry", "inline"]
    assert not CacheRun.from_request(opts(), {}).active
