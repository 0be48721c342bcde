"""Config and history patching (BuildKit's rules), on documents shaped like the frontend's."""

from __future__ import annotations

import json

import pytest

from buildkitpy.errors import InvalidArgument
from buildkitpy.exporter.imagebuild.config import LayerMeta, format_time, normalize_history, patch_config

T1, T2 = 1_700_000_000.5, 1_700_000_100
META = [LayerMeta(T1, "layer one"), LayerMeta(T2, "layer two")]
PLATFORM = {"os": "linux", "architecture": "arm64"}


def test_time_format_is_gos():
    assert format_time(1_700_000_000) == "2023-11-14T22:13:20Z"
    assert format_time(1_700_000_000.5) == "2023-11-14T22:13:20.5Z"


def test_missing_history_is_added_from_the_layers():
    history = normalize_history([], META)
    assert history == [
        {"created": format_time(T1), "created_by": "layer one", "comment": "buildkit.exporter.image.v0"},
        {"created": format_time(T2), "created_by": "layer two", "comment": "buildkit.exporter.image.v0"}]


def test_extra_layer_entries_become_empty_and_times_are_filled():
    frontend = [{"created_by": "ENV A=1", "empty_layer": True}, {"created_by": "COPY a /"},
                {"created_by": "RUN x"}, {"created_by": "RUN y"}]
    history = normalize_history(frontend, META)
    assert [h.get("empty_layer", False) for h in history] == [True, False, False, True]
    # layer entries get their layer's time; the others the first new layer's or the previous one
    assert [h["created"] for h in history] == [format_time(T1), format_time(T1), format_time(T2),
                                               format_time(T2)]
    assert list(history[0]) == ["created", "created_by", "empty_layer"]


def test_patch_sets_rootfs_created_and_sorted_compact_keys():
    raw = json.dumps({"os": "linux", "architecture": "amd64", "config": {"Env": ["A=<b>"], "Cmd": ["sh"]}})
    out = patch_config(raw.encode(), ["sha256:" + "1" * 64, "sha256:" + "2" * 64], META, platform=PLATFORM)
    doc = json.loads(out)
    assert list(doc) == sorted(doc)
    assert list(doc["config"]) == ["Env", "Cmd"]  # nested order as the frontend wrote it
    assert b"\\u003cb\\u003e" in out and b", " not in out
    assert doc["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + "1" * 64, "sha256:" + "2" * 64]}
    assert doc["created"] == format_time(T2)


def test_epoch_clamps_new_times_but_not_the_base_images_history():
    base_history = [{"created": "2020-01-01T00:00:00Z", "created_by": "base layer"}]
    raw = json.dumps({"os": "linux", "architecture": "amd64", "created": "2030-01-01T00:00:00Z",
                      "history": base_history + [{"created_by": "COPY a /", "comment": "c"}]})
    base = json.dumps({"history": base_history}).encode()
    doc = json.loads(patch_config(raw.encode(), ["sha256:" + "1" * 64, "sha256:" + "2" * 64], META,
                                  platform=PLATFORM, epoch=1_600_000_000, base_config=base))
    assert [h["created"] for h in doc["history"]] == ["2020-01-01T00:00:00Z", "2020-09-13T12:26:40Z"]
    assert doc["created"] == "2020-09-13T12:26:40Z"


def test_default_config_for_plain_llb_results():
    arm = {"os": "linux", "architecture": "arm", "variant": "v7"}
    doc = json.loads(patch_config(None, [], [], platform=arm))
    assert (doc["os"], doc["architecture"], doc["variant"]) == ("linux", "arm", "v7")
    assert doc["config"]["WorkingDir"] == "/" and doc["config"]["Env"][0].startswith("PATH=")
    assert doc["history"] == [] and doc["rootfs"] == {"type": "layers", "diff_ids": None}
    assert doc["created"] is None


@pytest.mark.parametrize("raw, message", [
    (b"{not json", "invalid image config"),
    (b"[1]", "not a JSON object"),
    (b'{"architecture": "amd64"}', "missing os"),
    (b'{"os": "linux"}', "missing architecture"),
    (b'{"os": "linux", "architecture": "amd64", "history": [1]}', "history"),
    (b'{"os": "linux", "architecture": "amd64", "created": "yesterday"}', "invalid time"),
])
def test_bad_frontend_configs_are_clear_errors(raw, message):
    with pytest.raises(InvalidArgument, match=message):
        patch_config(raw, [], [], platform=PLATFORM, epoch=0)
