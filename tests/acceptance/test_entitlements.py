"""The entitlement matrix: ``network.host`` and ``security.insecure`` need the daemon's allowance
(``--allow-insecure-entitlement`` or ``insecure-entitlements`` in buildkitd.toml) and the client's
request (``--allow``); each denial fails with BuildKit's message and the daemon keeps serving."""

from __future__ import annotations

import pytest

from tests.acceptance.helpers import Runner, base, sh

pytestmark = pytest.mark.root

# BuildKit's texts (util/entitlements: daemon refusal; ent.Check at definition load: client refusal)
DAEMON_REFUSES = "granting entitlement {} is not allowed by build daemon configuration"
NOT_ALLOWED = "{} is not allowed"


def _host_caps() -> str:
    """Privileged means every capability the daemon itself holds (its bounding set)."""
    for line in open("/proc/self/status"):
        if line.startswith("CapBnd:"):
            return line.split()[1]
    raise AssertionError("no CapBnd in /proc/self/status")


FULL_CAPS = _host_caps()


def host_net():
    return sh(base(), "cat /proc/net/dev > /netdev", network="host").root()


def sandbox_net():
    return sh(base(), "cat /proc/net/dev > /netdev").root()


def insecure():
    return sh(base(), "grep CapEff /proc/self/status > /caps", security="insecure").root()


def secure():
    return sh(base(), "grep CapEff /proc/self/status > /caps").root()


def _interfaces(path) -> set[str]:
    return {line.split(":")[0].strip() for line in path.read_text().splitlines()[2:]}


def _fails(runner: Runner, state, args: tuple[str, ...], message: str) -> None:
    r = runner.build(state, None, args=args, check=False)
    assert not r.ok, f"expected a denial with {message!r}"
    assert message in r.stderr, r.stderr[-2000:]
    assert "PermissionDenied" not in r.stderr, r.stderr[-2000:]  # BuildKit's plain error, no code name
    assert runner.daemon.alive()


def test_daemon_without_allowance_refuses_every_request(make_daemon, busybox_dir, tmp_path):
    runner = Runner(make_daemon(), busybox_dir)
    for ent in ("network.host", "security.insecure"):
        _fails(runner, secure(), ("--allow", ent), DAEMON_REFUSES.format(ent))
    _fails(runner, host_net(), (), NOT_ALLOWED.format("network.host"))
    _fails(runner, insecure(), (), NOT_ALLOWED.format("security.insecure"))
    # the default sandbox still works, with a reduced capability set
    out = tmp_path / "secure"
    runner.build(secure(), out)
    assert FULL_CAPS not in (out / "caps").read_text()


def test_flag_allowance_grants_only_what_the_client_asks(make_daemon, busybox_dir, tmp_path):
    runner = Runner(make_daemon("--allow-insecure-entitlement", "network.host"), busybox_dir)
    out = tmp_path / "host"
    runner.build(host_net(), out, args=("--allow", "network.host"))
    host_ifaces = _interfaces(out / "netdev")
    assert host_ifaces - {"lo"}, "network.host should see the host's interfaces"
    # the same graph, now cached on this daemon, is still refused without the client's request
    _fails(runner, host_net(), (), NOT_ALLOWED.format("network.host"))
    # not allowed by this daemon at all
    _fails(runner, insecure(), ("--allow", "security.insecure"), DAEMON_REFUSES.format("security.insecure"))
    # requesting network.host does not grant security.insecure
    _fails(runner, insecure(), ("--allow", "network.host"), NOT_ALLOWED.format("security.insecure"))


def test_config_allowance_and_granted_insecure(make_daemon, busybox_dir, tmp_path):
    cfg = tmp_path / "buildkitd.toml"
    cfg.write_text('insecure-entitlements = ["network.host", "security.insecure"]\n')
    runner = Runner(make_daemon("--config", str(cfg)), busybox_dir)
    out = tmp_path / "insecure"
    runner.build(insecure(), out, args=("--allow", "security.insecure"))
    assert FULL_CAPS in (out / "caps").read_text()
    out = tmp_path / "both"
    runner.build(host_net(), out, args=("--allow", "network.host", "--allow", "security.insecure"))
    assert _interfaces(out / "netdev") - {"lo"}
    _fails(runner, insecure(), (), NOT_ALLOWED.format("security.insecure"))
    _fails(runner, host_net(), ("--allow", "security.insecure"), NOT_ALLOWED.format("network.host"))
