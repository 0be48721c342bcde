"""buildkitd.toml parsing: the keys we act on, warnings (never errors) for the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildkitpy.daemon.config import load_config, parse_duration, parse_size

CONFORMANCE_CONFIG = Path(__file__).resolve().parents[2].parent / "shared/conformance/buildkitd.toml"


def test_full_config(tmp_path):
    path = tmp_path / "buildkitd.toml"
    path.write_text("""
root = "/srv/bk"
debug = true
insecure-entitlements = ["network.host", "security.insecure"]
somethingNew = 1

[grpc]
  address = ["unix:///run/x.sock", "tcp://0.0.0.0:1234"]
  [grpc.tls]
    cert = "/c.pem"
    key = "/k.pem"
    ca = "/ca.pem"

[registry."docker.io"]
  mirrors = ["127.0.0.1:5000"]
[registry."127.0.0.1:5000"]
  http = true
  insecure = true
  ca = ["/etc/ca.pem"]
  unknownRegistryKey = "x"

[worker.oci]
  max-parallelism = 3
  gc = false
  [[worker.oci.gcpolicy]]
    all = true
    keepDuration = "48h"
    maxUsedSpace = "512MB"
    filters = ["type==source.local"]
""")
    cfg = load_config(path)
    assert cfg.root == Path("/srv/bk") and cfg.debug
    assert cfg.addresses == ["unix:///run/x.sock", "tcp://0.0.0.0:1234"]
    assert (cfg.tls.cert, cfg.tls.key, cfg.tls.ca) == ("/c.pem", "/k.pem", "/ca.pem")
    assert cfg.registries["docker.io"].mirrors == ["127.0.0.1:5000"]
    reg = cfg.registries["127.0.0.1:5000"]
    assert reg.http and reg.insecure and reg.ca == ["/etc/ca.pem"]
    assert cfg.max_parallelism == 3 and cfg.gc is False
    pol = cfg.gc_policies[0]
    assert pol.all and pol.keep_duration == 48 * 3600 and pol.max_used_space == 512_000_000
    assert pol.filters == ["type==source.local"]
    assert cfg.insecure_entitlements == ["network.host", "security.insecure"]
    assert sorted(cfg.warnings) == ["unknown config key registry.127.0.0.1:5000.unknownRegistryKey",
                                    "unknown config key somethingNew"]


def test_conformance_config_parses_without_warnings():
    cfg = load_config(CONFORMANCE_CONFIG)
    assert cfg.registries["docker.io"].mirrors == ["127.0.0.1:5000"]
    assert cfg.registries["127.0.0.1:5000"].http
    assert cfg.warnings == []


def test_invalid_toml_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("root = \n")
    with pytest.raises(SystemExit, match="invalid config file"):
        load_config(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_sizes_and_durations():
    assert parse_size("10GB") == 10 * 1000**3
    assert parse_size("512MiB") == 512 * 1024**2
    assert parse_size(42) == 42
    assert parse_duration("1h30m") == 5400
    assert parse_duration("90s") == 90
    assert parse_duration(7) == 7
    for bad in ("10XB", "abc"):
        with pytest.raises(ValueError):
            parse_size(bad)
    with pytest.raises(ValueError):
        parse_duration("12")
