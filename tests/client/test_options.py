"""buildctl option syntax: outputs, secrets, opts, locals, entitlements, cache entries, ssh."""

from __future__ import annotations

import pytest

from buildkitpy.client import options
from buildkitpy.client.options import NotSupportedYet, OptionError


def test_local_output_moves_dest_out_of_the_exporter_attrs(tmp_path):
    entry = options.parse_output(f"type=local,dest={tmp_path}/out")
    assert entry.type == "local"
    assert entry.attrs == {}
    assert entry.output_dir == tmp_path / "out"
    assert entry.output_file is None


def test_local_output_keeps_other_attrs(tmp_path):
    entry = options.parse_output(f"type=local,dest={tmp_path},platform-split=false")
    assert entry.attrs == {"platform-split": "false"}


@pytest.mark.parametrize("kind", ["tar", "oci", "docker"])
def test_tar_like_outputs_write_to_a_file(tmp_path, kind):
    entry = options.parse_output(f"type={kind},dest={tmp_path}/img.tar,name=x")
    assert entry.output_file == f"{tmp_path}/img.tar"
    assert entry.attrs == {"name": "x"}
    assert entry.output_dir is None


def test_tar_to_stdout_is_refused_on_a_terminal():
    with pytest.raises(OptionError, match="output file is required for tar exporter. refusing to write"):
        options.parse_output("type=tar", stdout_is_tty=True)
    assert options.parse_output("type=tar,dest=-", stdout_is_tty=False).output_file == "-"


def test_tar_destination_that_is_a_directory_is_an_error(tmp_path):
    with pytest.raises(OptionError, match="destination file is a directory"):
        options.parse_output(f"type=tar,dest={tmp_path}")


def test_image_output_keeps_its_attrs_and_rejects_dest():
    entry = options.parse_output("type=image,name=docker.io/u/i,push=true")
    assert (entry.type, entry.attrs, entry.writes_to_client) == (
        "image", {"name": "docker.io/u/i", "push": "true"}, False)
    with pytest.raises(OptionError, match="output /x is not supported by image exporter"):
        options.parse_output("type=image,dest=/x")


def test_output_errors_match_buildctl():
    with pytest.raises(OptionError, match=r"--output requires type=<type>"):
        options.parse_output("dest=/x")
    with pytest.raises(OptionError, match="invalid value dest"):
        options.parse_output("type=local,dest")
    with pytest.raises(OptionError, match="output=/x not supported for --output, you meant dest=/x?"):
        options.parse_output("type=local,output=/x")
    with pytest.raises(OptionError, match="output directory is required for local exporter"):
        options.parse_output("type=local")


def test_oci_layout_directory_output_is_not_supported_yet(tmp_path):
    with pytest.raises(NotSupportedYet, match="is not supported yet"):
        options.parse_output(f"type=oci,tar=false,dest={tmp_path}")


def test_output_fields_are_csv_quoted(tmp_path):
    entry = options.parse_output('type=image,"name=a/b:1,a/b:2",dest=')
    assert entry.attrs["name"] == "a/b:1,a/b:2"
    assert "dest" not in entry.attrs or entry.attrs["dest"] == ""


def test_keys_are_case_insensitive(tmp_path):
    entry = options.parse_output(f"TYPE=local,DEST={tmp_path}")
    assert entry.output_dir == tmp_path


# -- secrets -------------------------------------------------------------------------------------

def test_secret_forms():
    assert options.parse_secret("id=s,src=/f") == options.SecretSource("s", "/f", "")
    assert options.parse_secret("id=s,source=/f") == options.SecretSource("s", "/f", "")
    assert options.parse_secret("id=s,env=TOKEN") == options.SecretSource("s", "", "TOKEN")
    # type=env with src= means the env var name
    assert options.parse_secret("type=env,id=s,src=TOKEN") == options.SecretSource("s", "", "TOKEN")


def test_secret_errors():
    with pytest.raises(OptionError, match="invalid field 'id' must be a key=value pair"):
        options.parse_secret("id")
    with pytest.raises(OptionError, match='unsupported secret type "ssh"'):
        options.parse_secret("type=ssh,id=x")
    with pytest.raises(OptionError, match="unexpected key 'foo' in 'foo=1'"):
        options.parse_secret("id=x,foo=1")


def test_load_secrets_reads_files_and_env(tmp_path):
    f = tmp_path / "secret.txt"
    f.write_bytes(b"file-value")
    env = {"TOKEN": "env-value", "byid": "from-env-by-id"}
    got = options.load_secrets([
        options.SecretSource("a", file_path=str(f)),
        options.SecretSource("b", env="TOKEN"),
        options.SecretSource("byid"),                 # env var named like the id
        options.SecretSource(str(f)),                 # else a file named like the id
    ], environ=env)
    assert got == {"a": b"file-value", "b": b"env-value", "byid": b"from-env-by-id", str(f): b"file-value"}


def test_load_secrets_errors(tmp_path):
    with pytest.raises(OptionError, match="secret missing ID"):
        options.load_secrets([options.SecretSource("")], environ={})
    with pytest.raises(OptionError, match=f"failed to stat {tmp_path}/nope"):
        options.load_secrets([options.SecretSource("x", file_path=f"{tmp_path}/nope")], environ={})
    big = tmp_path / "big"
    big.write_bytes(b"x" * (options.MAX_SECRET_SIZE + 1))
    with pytest.raises(OptionError, match="secret x too big"):
        options.load_secrets([options.SecretSource("x", file_path=str(big))], environ={})


# -- opts, locals, allow -------------------------------------------------------------------------

def test_opts_resolve_build_args_from_the_environment():
    env = {"FOO": "from-env", "SOURCE_DATE_EPOCH": "0"}
    got = options.parse_opts(["target=t", "build-arg:FOO", "build-arg:UNSET", "build-arg:X=1",
                              "filename=Dockerfile.alt"], environ=env)
    assert got == {"target": "t", "build-arg:FOO": "from-env", "build-arg:X": "1",
                   "filename": "Dockerfile.alt", "build-arg:SOURCE_DATE_EPOCH": "0"}


def test_opt_without_value_is_invalid():
    with pytest.raises(OptionError, match="invalid opt: invalid value target"):
        options.parse_opts(["target"], environ={})


def test_last_duplicate_opt_wins():
    assert options.parse_opts(["a=1", "a=2"], environ={}) == {"a": "2"}


def test_locals(tmp_path):
    (tmp_path / "ctx").mkdir()
    assert options.parse_locals([f"context={tmp_path}/ctx", f"dockerfile={tmp_path}/ctx"]) == {
        "context": tmp_path / "ctx", "dockerfile": tmp_path / "ctx"}
    with pytest.raises(OptionError, match="invalid local: invalid value context"):
        options.parse_locals(["context"])
    with pytest.raises(OptionError, match="no such file or directory"):
        options.parse_locals([f"context={tmp_path}/missing"])


def test_allow():
    allowed = ["network.host", "security.insecure", "device", "device=nvidia.com/gpu"]
    assert options.validate_allow(allowed) == allowed
    with pytest.raises(OptionError, match="unknown entitlement network.none"):
        options.validate_allow(["network.none"])
    with pytest.raises(OptionError, match='unknown device config key "size"'):
        options.validate_allow(["device=gpu,size=1"])


# -- cache, ssh ----------------------------------------------------------------------------------

def test_export_cache_entries():
    got = options.parse_export_cache(["type=local,dest=/c", "type=registry,ref=r,mode=max",
                                      "example.com/foo"])
    assert got == [
        options.CacheOptionsEntry("local", {"dest": "/c", "mode": "min"}),
        options.CacheOptionsEntry("registry", {"ref": "r", "mode": "max"}),
        options.CacheOptionsEntry("registry", {"mode": "min", "ref": "example.com/foo"}),
    ]
    with pytest.raises(OptionError, match="--export-cache requires type=<type>"):
        options.parse_export_cache(["type=,dest=/c"])


def test_import_cache_entries():
    assert options.parse_import_cache(["type=local,src=/c", "example.com/foo"]) == [
        options.CacheOptionsEntry("local", {"src": "/c"}),
        options.CacheOptionsEntry("registry", {"ref": "example.com/foo"}),
    ]
    with pytest.raises(OptionError, match="invalid value src"):
        options.parse_import_cache(["type=local,src"])


def test_ssh():
    got = options.parse_ssh(["default", "key=/a,/b", "sock=/s,raw=true"])
    assert got == [options.SSHAgentConfig("default"), options.SSHAgentConfig("key", ["/a", "/b"]),
                   options.SSHAgentConfig("sock", ["/s"], raw=True)]
    with pytest.raises(OptionError, match='raw mode must supply exactly one socket path for "x"'):
        options.parse_ssh(["x=/a,/b,raw=true"])
