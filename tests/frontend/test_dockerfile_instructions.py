"""Typed instructions, flags, RUN mounts/devices and stages, with BuildKit's error texts."""

from __future__ import annotations

import pytest

from buildkitpy.frontend.dockerfile.flags import BFlags, FlagError
from buildkitpy.frontend.dockerfile.instructions import (
    AddCommand,
    ArgCommand,
    CmdCommand,
    CopyCommand,
    EntrypointCommand,
    EnvCommand,
    ExposeCommand,
    FromCommand,
    HealthCheckCommand,
    LabelCommand,
    MaintainerCommand,
    OnbuildCommand,
    RunCommand,
    ShellCommand,
    ShellInlineFile,
    SourceContent,
    StopSignalCommand,
    UserCommand,
    VolumeCommand,
    WorkdirCommand,
    find_stage,
    parse_dockerfile,
    parse_instruction,
    parse_instructions,
    parse_stages,
)
from buildkitpy.frontend.dockerfile.mounts import MountError, csv_fields, parse_device, parse_mount
from buildkitpy.frontend.dockerfile.parser import DockerfileParseError, parse
from buildkitpy.gocompat import parse_duration, ram_in_bytes, suggest


def ins(src: str):
    """The last instruction of ``src``."""
    return parse_instruction(parse(src).nodes[-1])


def fails(src: str) -> str:
    """BuildKit's user-facing message for a Dockerfile rejected before the build."""
    with pytest.raises(DockerfileParseError) as info:
        parse_dockerfile(src.encode())
    return str(info.value)


BARE = 'bare " in non-quoted-field'
EXTRANEOUS = 'extraneous or missing " in quoted-field'


def same(value: str) -> str:
    return value


# --- one test per instruction ------------------------------------------------------------------------


def test_from():
    f = ins("FROM --platform=linux/arm64 alpine:3 AS Builder")
    assert isinstance(f, FromCommand)
    assert (f.base_name, f.stage_name, f.platform) == ("alpine:3", "builder", "linux/arm64")
    assert (f.name, f.keyword, f.code) == ("FROM", "from", "FROM --platform=linux/arm64 alpine:3 AS Builder")
    assert ins("from scratch").stage_name == ""
    assert ins("FROM a as b.c-d_e").stage_name == "b.c-d_e"


def test_from_errors():
    assert (
        fails("FROM a b") == "dockerfile parse error on line 1: FROM requires either one or three arguments"
    )
    assert fails("FROM") == "dockerfile parse error on line 1: FROM requires either one or three arguments"
    assert (
        fails("FROM a TO b")
        == "dockerfile parse error on line 1: FROM requires either one or three arguments"
    )
    assert fails("FROM a AS 1st") == (
        'dockerfile parse error on line 1: invalid name for build stage: "1st", name can\'t start with a '
        "number or contain symbols"
    )
    assert fails("FROM a AS a/b").endswith(
        'invalid name for build stage: "a/b", name can\'t start with a number or contain symbols'
    )
    assert fails("FROM --plaform=x a") == (
        "dockerfile parse error on line 1: unknown flag: --plaform (did you mean platform?)"
    )


def test_from_doc_comment():
    f = parse_instructions(parse("# builder compiles the app\nFROM a AS builder\n"))[0]
    assert f.doc_comment == "compiles the app"
    assert f.comments == ["builder compiles the app"]


def test_env_and_label():
    env = ins('ENV A=1 B="x y"')
    assert isinstance(env, EnvCommand)
    assert [(kv.key, kv.value, kv.no_delim) for kv in env.env] == [("A", "1", False), ("B", '"x y"', False)]
    legacy = ins("ENV A hello world")
    assert [(kv.key, kv.value, kv.no_delim) for kv in legacy.env] == [("A", "hello world", True)]
    label = ins('LABEL "com.x"=1 b=2')
    assert isinstance(label, LabelCommand)
    assert [(kv.key, kv.value) for kv in label.labels] == [('"com.x"', "1"), ("b", "2")]


def test_env_label_errors():
    assert fails("FROM a\nENV") == "dockerfile parse error on line 2: ENV requires at least one argument"
    assert fails("FROM a\nLABEL") == "dockerfile parse error on line 2: LABEL requires at least one argument"
    assert fails("FROM a\nENV =x") == "dockerfile parse error on line 2: ENV names can not be blank"
    assert fails("FROM a\nLABEL =x") == "dockerfile parse error on line 2: LABEL names can not be blank"
    assert fails("FROM a\nENV --x A=1") == "dockerfile parse error on line 2: unknown flag: --x"
    # parser-level errors carry no "dockerfile parse error" prefix in BuildKit either
    assert fails("FROM a\nENV A") == "ENV must have two arguments"


def test_maintainer():
    m = ins("MAINTAINER Jane <j@x>")
    assert isinstance(m, MaintainerCommand) and m.maintainer == "Jane <j@x>"
    assert (
        fails("FROM a\nMAINTAINER")
        == "dockerfile parse error on line 2: MAINTAINER requires exactly one argument"
    )


def test_copy():
    c = ins("COPY --from=build --chown=1:2 --chmod=644 --link --parents --exclude=*.md --exclude=x a b /dst/")
    assert isinstance(c, CopyCommand)
    assert (c.from_, c.chown, c.chmod, c.link, c.parents) == ("build", "1:2", "644", True, True)
    assert c.exclude_patterns == ["*.md", "x"]
    assert (c.source_paths, c.dest_path) == (["a", "b"], "/dst/")
    plain = ins('COPY ["a b", "c"]')
    assert (plain.source_paths, plain.dest_path, plain.link, plain.from_) == (["a b"], "c", False, "")
    assert ins("COPY --link=false a b").link is False


def test_copy_heredoc_sources():
    src = "FROM a\nCOPY <<one <<-'two' x /dst/\n  1\none\n\t\t2\n\ttwo\n"
    c = parse_instructions(parse(src))[1]
    assert c.source_paths == ["x"]
    assert c.source_contents == [
        SourceContent(path="one", data="  1\n", expand=True),
        SourceContent(path="two", data="2\n", expand=False),  # <<- strips leading tabs here
    ]


def test_add():
    flags = "--chown=app --chmod=755 --link --checksum=sha256:ab --keep-git-dir --unpack=false --exclude=.git"
    a = ins(f"ADD {flags} https://x/y.tgz /opt/")
    assert isinstance(a, AddCommand)
    assert (a.chown, a.chmod, a.link, a.checksum) == ("app", "755", True, "sha256:ab")
    assert (a.keep_git_dir, a.unpack, a.exclude_patterns) == (True, False, [".git"])
    bare = ins("ADD a b")
    assert (bare.keep_git_dir, bare.unpack, bare.checksum) == (None, None, "")


def test_add_copy_errors():
    for cmd in ("ADD", "COPY"):
        assert fails(f"FROM a\n{cmd} only") == (
            f"dockerfile parse error on line 2: {cmd} requires at least two arguments, but only one was "
            "provided. Destination could not be determined"
        )
        assert fails(f"FROM a\n{cmd} x <<EOF\nEOF\n") == (
            f"dockerfile parse error on line 2: {cmd} cannot accept a heredoc as a destination"
        )
    assert fails("FROM a\nCOPY --form=x a b") == (
        "dockerfile parse error on line 2: unknown flag: --form (did you mean from?)"
    )
    assert fails("FROM a\nADD --from=x a b").endswith("unknown flag: --from")
    assert fails("FROM a\nCOPY --from a b").endswith("missing a value on flag: --from")
    assert fails("FROM a\nCOPY --from=a --from=b a b").endswith("duplicate flag specified: --from")
    assert fails("FROM a\nCOPY --link=yes a b").endswith("expecting boolean value for flag --link, not: yes")
    assert fails("FROM a\nCOPY --link= a b").endswith("missing a value on flag: --link")
    assert fails("FROM a\nCOPY --exclude a b").endswith("missing a value on flag: --exclude")
    assert fails("FROM a\nADD --unpack=maybe a b").endswith(
        "expecting boolean value for flag --unpack, not: maybe"
    )


def test_run():
    flags = "--network=none --security=insecure --mount=type=cache,target=/c --device=vendor.com/gpu=0"
    r = ins(f"RUN {flags} echo hi")
    assert isinstance(r, RunCommand)
    assert (r.cmd_line, r.prepend_shell, r.network, r.security) == (["echo hi"], True, "none", "insecure")
    assert r.mount_specs == ["type=cache,target=/c"]
    assert r.mounts is None
    assert [(d.name, d.required) for d in r.devices] == [("vendor.com/gpu=0", False)]
    assert sorted(r.flags_used) == ["device", "mount", "network", "security"]
    exec_form = ins('RUN ["echo", "hi"]')
    assert (exec_form.cmd_line, exec_form.prepend_shell, exec_form.network) == (
        ["echo", "hi"],
        False,
        "default",
    )
    assert exec_form.security == "sandbox"


def test_run_heredoc_files_keep_body():
    r = parse_instructions(parse("FROM a\nRUN <<-EOF\n\techo hi\n\tEOF\n"))[1]
    assert r.cmd_line == ["<<-EOF"]
    assert r.files == [ShellInlineFile(name="EOF", data="\techo hi\n", chomp=True)]


def test_run_errors():
    assert (
        fails("FROM a\nRUN --network=bridge x")
        == 'dockerfile parse error on line 2: invalid network mode "bridge"'
    )
    assert (
        fails("FROM a\nRUN --security=root x")
        == 'dockerfile parse error on line 2: security "root" is not valid'
    )
    assert fails("FROM a\nRUN --mnt=type=bind x") == (
        "dockerfile parse error on line 2: unknown flag: --mnt (did you mean mount?)"
    )
    assert fails("FROM a\nRUN --mount=from=$X,target=/a x") == (
        "dockerfile parse error on line 2: 'from' doesn't support variable expansion, "
        "define alias stage instead"
    )
    # quotes in flags are removed by the parser, so the CSV parser only sees escaped ones
    assert fails('FROM a\nRUN --mount=target=/a\\"b x') == (
        "dockerfile parse error on line 2: failed to parse csv mounts: parse error on line 1, column 10: "
        'bare " in non-quoted-field'
    )
    assert fails("FROM a\nRUN --mount= x").endswith("failed to parse csv mounts: EOF")
    assert fails("FROM a\nRUN --device=a,b x").endswith("invalid field 'b' must be a key=value pair")
    # everything else about a mount is only checked once values are expanded (see test_shell.py)
    assert isinstance(ins("RUN --mount=type=$T,bogus=1 x"), RunCommand)


def test_cmd_and_entrypoint():
    c = ins("CMD echo $HOME")
    assert isinstance(c, CmdCommand) and (c.cmd_line, c.prepend_shell) == (["echo $HOME"], True)
    assert ins("CMD []").cmd_line == []
    e = ins('ENTRYPOINT ["/bin/app", "--flag"]')
    assert isinstance(e, EntrypointCommand) and (e.cmd_line, e.prepend_shell) == (
        ["/bin/app", "--flag"],
        False,
    )
    assert ins("ENTRYPOINT []").cmd_line is None  # clears the entrypoint
    assert fails("FROM a\nCMD --x y").endswith("unknown flag: --x")


def test_healthcheck():
    flags = "--interval=30s --timeout=5s --start-period=1m30s --start-interval=500ms --retries=4"
    h = ins(f"HEALTHCHECK {flags} CMD wget -q -O- http://localhost/ || exit 1")
    assert isinstance(h, HealthCheckCommand)
    assert h.health.test == ["CMD-SHELL", "wget -q -O- http://localhost/ || exit 1"]
    assert (h.health.interval, h.health.timeout) == (30_000_000_000, 5_000_000_000)
    assert (h.health.start_period, h.health.start_interval, h.health.retries) == (
        90_000_000_000,
        500_000_000,
        4,
    )
    assert ins('HEALTHCHECK CMD ["curl", "-f", "x"]').health.test == ["CMD", "curl", "-f", "x"]
    assert ins("healthcheck none").health.test == ["NONE"]
    assert ins("HEALTHCHECK --interval=0s CMD x").health.interval == 0
    assert ins("HEALTHCHECK --bogus NONE").health.test == ["NONE"]  # flags are not looked at for NONE


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("HEALTHCHECK", "HEALTHCHECK requires at least one argument"),
        ("HEALTHCHECK NONE x", "HEALTHCHECK NONE takes no arguments"),
        ("HEALTHCHECK CONNECT tcp", 'Unknown type "CONNECT" in HEALTHCHECK (try CMD)'),
        ("HEALTHCHECK CMD", "Missing command after HEALTHCHECK CMD"),
        ("HEALTHCHECK --interval=5 CMD x", 'time: missing unit in duration "5"'),
        ("HEALTHCHECK --timeout=1d CMD x", 'time: unknown unit "d" in duration "1d"'),
        ("HEALTHCHECK --start-period=abc CMD x", 'time: invalid duration "abc"'),
        ("HEALTHCHECK --interval=100us CMD x", 'Interval "interval" cannot be less than 1ms'),
        ("HEALTHCHECK --start-interval=-1s CMD x", 'Interval "start-interval" cannot be less than 1ms'),
        ("HEALTHCHECK --retries=x CMD x", 'strconv.ParseInt: parsing "x": invalid syntax'),
        (
            "HEALTHCHECK --retries=99999999999 CMD x",
            'strconv.ParseInt: parsing "99999999999": value out of range',
        ),
        ("HEALTHCHECK --retries=-1 CMD x", "--retries cannot be negative (-1)"),
        ("HEALTHCHECK --interval CMD x", "missing a value on flag: --interval"),
        ("HEALTHCHECK --intervl=1s CMD x", "unknown flag: --intervl (did you mean interval?)"),
    ],
)
def test_healthcheck_errors(line, message):
    assert fails(f"FROM a\n{line}") == f"dockerfile parse error on line 2: {message}"


def test_expose_user_volume_workdir_stopsignal():
    assert ins("EXPOSE 8080 443/tcp 53/udp").ports == ["443/tcp", "53/udp", "8080"]  # sorted, like BuildKit
    assert isinstance(ins("EXPOSE 1"), ExposeCommand)
    u = ins("USER app:grp")
    assert isinstance(u, UserCommand) and u.user == "app:grp"
    v = ins('VOLUME ["/a", " /b "]')
    assert isinstance(v, VolumeCommand) and v.volumes == ["/a", "/b"]
    assert ins("VOLUME /x /y").volumes == ["/x", "/y"]
    w = ins("WORKDIR /srv/my app")
    assert isinstance(w, WorkdirCommand) and w.path == "/srv/my app"
    s = ins("STOPSIGNAL SIGINT")
    assert isinstance(s, StopSignalCommand) and s.signal == "SIGINT"
    assert ins("STOPSIGNAL --anything 9").signal == "9"  # BuildKit ignores flags here


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("EXPOSE", "EXPOSE requires at least one argument"),
        ("USER", "USER requires exactly one argument"),
        ("VOLUME", "VOLUME requires at least one argument"),
        ('VOLUME ["/a", ""]', "VOLUME specified can not be an empty string"),
        ("WORKDIR", "WORKDIR requires exactly one argument"),
        ("STOPSIGNAL", "STOPSIGNAL requires exactly one argument"),
        ("EXPOSE --x 80", "unknown flag: --x"),
        ("USER --x a", "unknown flag: --x"),
        ("VOLUME --x /a", "unknown flag: --x"),
        ("WORKDIR --x /a", "unknown flag: --x"),
    ],
)
def test_simple_instruction_errors(line, message):
    assert fails(f"FROM a\n{line}") == f"dockerfile parse error on line 2: {message}"


def test_arg():
    a = ins('ARG A B=1 C="x y" D=')
    assert isinstance(a, ArgCommand)
    assert [(p.key, p.value) for p in a.args] == [("A", None), ("B", "1"), ("C", '"x y"'), ("D", "")]
    documented = parse_instructions(parse("# VERSION which release to build\nARG VERSION=1\n"))[0]
    assert documented.args[0].doc_comment == "which release to build"
    assert ins("ARG --whatever A").args[0].key == "A"  # BuildKit ignores flags here
    assert fails("ARG") == "dockerfile parse error on line 1: ARG requires at least one argument"
    assert fails("ARG =1") == "dockerfile parse error on line 1: ARG names can not be blank"


def test_shell():
    s = ins('SHELL ["powershell", "-command"]')
    assert isinstance(s, ShellCommand) and s.shell == ["powershell", "-command"]
    assert fails("FROM a\nSHELL /bin/bash -c") == (
        "dockerfile parse error on line 2: SHELL requires the arguments to be in JSON form"
    )
    assert (
        fails("FROM a\nSHELL []") == "dockerfile parse error on line 2: SHELL requires at least one argument"
    )


def test_onbuild():
    o = parse_instructions(parse("FROM a\nonbuild   RUN --mount=type=cache,target=/c echo hi\n"))[1]
    assert isinstance(o, OnbuildCommand)
    assert o.expression == "RUN --mount=type=cache,target=/c echo hi"
    trigger = o.trigger()
    assert isinstance(trigger, RunCommand) and trigger.mount_specs == ["type=cache,target=/c"]


def test_onbuild_with_heredoc_rebuilds_the_expression():
    o = parse_instructions(parse("FROM a\nONBUILD COPY <<EOF /greeting\nhi\nEOF\n"))[1]
    assert o.expression == "COPY <<EOF /greeting\nhi\nEOF"
    trigger = o.trigger()
    assert isinstance(trigger, CopyCommand)
    assert trigger.source_contents == [SourceContent(path="EOF", data="hi\n", expand=True)]


def test_onbuild_trigger_is_only_checked_when_it_fires():
    o = ins("ONBUILD FROBNICATE")
    assert isinstance(o, OnbuildCommand)
    with pytest.raises(DockerfileParseError) as info:
        o.trigger()
    assert str(info.value) == "unknown instruction: FROBNICATE"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("ONBUILD", "ONBUILD requires at least one argument"),
        ("ONBUILD ONBUILD RUN x", "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
        ("ONBUILD FROM x", "FROM isn't allowed as an ONBUILD trigger"),
        ("ONBUILD maintainer x", "MAINTAINER isn't allowed as an ONBUILD trigger"),
        ("ONBUILD --x RUN y", "unknown flag: --x"),
    ],
)
def test_onbuild_errors(line, message):
    assert fails(f"FROM a\n{line}") == f"dockerfile parse error on line 2: {message}"


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("FROBNICATE", "unknown instruction: FROBNICATE"),
        ("RUNN", "unknown instruction: RUNN (did you mean RUN?)"),
        ("cpy", "unknown instruction: cpy (did you mean copy?)"),
        ("Exopse", "unknown instruction: Exopse (did you mean expose?)"),
        ("WORKDIRS", "unknown instruction: WORKDIRS (did you mean WORKDIR?)"),
    ],
)
def test_unknown_instruction(word, message):
    assert fails(f"FROM a\n\n{word} x\n") == f"dockerfile parse error on line 3: {message}"


def test_error_carries_location_and_text():
    with pytest.raises(DockerfileParseError) as info:
        parse_dockerfile(b"FROM a\nRUN --network=x \\\n  echo hi\n")
    err = info.value
    assert (err.line, err.end_line) == (2, 3)
    assert err.reason == 'invalid network mode "x"'
    assert err.text == "RUN --network=x   echo hi"


# --- stages -------------------------------------------------------------------------------------------


def test_stages_and_global_args():
    src = (
        "ARG BASE=alpine\nARG TAG\nFROM $BASE AS Build\nARG TAG\nRUN make\n"
        "FROM scratch\nCOPY --from=BUILD /o /\n"
    )
    stages, meta = parse_stages(parse_instructions(parse(src)))
    assert [a.args[0].key for a in meta] == ["BASE", "TAG"]
    assert [(s.name, s.base_name) for s in stages] == [("build", "$BASE"), ("", "scratch")]
    assert [type(c).__name__ for c in stages[0].commands] == ["ArgCommand", "RunCommand"]
    assert (stages[0].start_line, stages[0].source_code, stages[0].orig_cmd) == (
        3,
        "FROM $BASE AS Build",
        "FROM",
    )
    assert find_stage(stages, "BUILD") == 0
    assert find_stage(stages, "missing") is None


def test_instruction_before_from():
    assert fails("RUN echo\nFROM a\n") == "no build stage in current context"
    assert fails("ARG A\nENV B=1\nFROM a\n") == "no build stage in current context"


def test_whole_file_checks():
    assert fails("") == "the Dockerfile cannot be empty"
    assert fails("# nothing\n") == "file with no instructions"
    assert fails("ARG A=1\n") == "dockerfile contains no stages to build"


def test_parse_dockerfile_bundle():
    df = parse_dockerfile(b"# syntax=docker/dockerfile:1\nARG V=1\nFROM a\nRUN x\n")
    assert df.ast.directive("syntax") == "docker/dockerfile:1"
    assert len(df.stages) == 1 and len(df.meta_args) == 1


# --- flags --------------------------------------------------------------------------------------------


def test_bflags():
    f = BFlags(["--a", "--b=x", "--c=1", "--c=2", "--", "--ignored"])
    a, b, c = f.add_bool("a"), f.add_string("b"), f.add_strings("c")
    f.parse()
    assert (a.is_true, b.value, c.values) == (True, "x", ["1", "2"])
    assert f.is_used("a") and not f.is_used("ignored")
    f = BFlags(["--a=TRUE", "--b=False"])
    a, b = f.add_bool("a", False), f.add_bool("b", True)
    f.parse()
    assert (a.value, b.value) == ("true", "false")
    f = BFlags(["-x"])
    with pytest.raises(FlagError, match="arg should start with -- : -x"):
        f.parse()


# --- mounts -------------------------------------------------------------------------------------------


def test_mount_defaults_per_type():
    bind = parse_mount("target=/src", same)
    assert (bind.type, bind.read_only, bind.target) == ("bind", True, "/src")
    cache = parse_mount("type=cache,target=/root/.cache", same)
    assert (cache.type, cache.read_only, cache.cache_sharing, cache.mode) == ("cache", False, "", None)
    tmpfs = parse_mount("type=tmpfs,dst=/tmp,size=64m", same)
    assert (tmpfs.read_only, tmpfs.size_limit, tmpfs.target) == (False, 64 << 20, "/tmp")


def test_mount_all_keys():
    spec = (
        "type=cache,id=go,target=/go,from=builder,source=/cache,sharing=LOCKED,mode=0755,uid=1000,gid=1000,rw"
    )
    m = parse_mount(spec, same)
    assert (m.cache_id, m.target, m.from_, m.source, m.cache_sharing) == (
        "go",
        "/go",
        "builder",
        "/cache",
        "locked",
    )
    assert (m.mode, m.uid, m.gid, m.read_only) == (0o755, 1000, 1000, False)
    s = parse_mount("type=secret,id=tok,env=TOKEN,required", same)
    assert (s.type, s.cache_id, s.env, s.required, s.read_only) == ("secret", "tok", "TOKEN", True, True)
    ssh = parse_mount("type=ssh,required=false,destination=/agent,RO=false", same)
    assert (ssh.required, ssh.target, ssh.read_only) == (False, "/agent", False)
    assert parse_mount("src=a,readonly,dst=/b", same).read_only is True
    assert parse_mount("readwrite=true,target=/b", same).read_only is False
    assert parse_mount('"target=/a,b",type=bind', same).target == "/a,b"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("type=volume,target=/a", 'unsupported mount type "volume"'),
        ("type=bnd,target=/a", 'unsupported mount type "bnd" (did you mean bind?)'),
        ("type=cache,target=/a,sharing=open", 'unsupported sharing value "open"'),
        ("type=cache,target=/a,sharing=lockd", 'unsupported sharing value "lockd" (did you mean locked?)'),
        ("target=/a,tagret=/b", "unexpected key 'tagret' in 'tagret=/b' (did you mean target?)"),
        ("target=/a,nonsense=1", "unexpected key 'nonsense' in 'nonsense=1'"),
        ("target=/a,novalue", "invalid field 'novalue' must be a key=value pair"),
        ("target=/a,ro=maybe", "invalid value for ro: maybe"),
        ("target=/a,readwrite=2", "invalid value for readwrite: 2"),
        ("target=/a,required", "unexpected key 'required' for mount type 'bind'"),
        ("required,type=secret,id=a", "unexpected key 'required' for mount type 'bind'"),
        ("type=secret,id=a,required=sure", "invalid value for required: sure"),
        ("type=cache,target=/a,size=1g", "unexpected key 'size' for mount type 'cache'"),
        ("type=tmpfs,target=/a,size=lots", "invalid value for size: lots"),
        ("type=cache,target=/a,mode=0999", "invalid value 0999 for mode"),
        ("type=cache,target=/a,uid=-1", "invalid value -1 for uid"),
        ("type=cache,target=/a,gid=x", "invalid value x for gid"),
        ("target=/a,mode=0644", 'mode not allowed for "bind" type mounts'),
        ("type=tmpfs,target=/a,uid=0", 'uid not allowed for "tmpfs" type mounts'),
        ("type=tmpfs,target=/a,gid=0", 'gid not allowed for "tmpfs" type mounts'),
        ("type=secret,id=a,from=x", "secret mount should not have a from"),
        ("type=secret,id=a,sharing=shared", "secret mount should not define sharing"),
        ("type=secret", "invalid secret mount. one of source, target required"),
        ("type=secret,id=a,source=b", "both source and id can't be set"),
        ("target=/a,sharing=private", "invalid cache sharing set for bind mount"),
        ('target="/a', "failed to parse csv mounts: parse error on line 1, column 8: " + BARE),
        ('"/a', "failed to parse csv mounts: parse error on line 1, column 2: " + EXTRANEOUS),
        ('"a"b', "failed to parse csv mounts: parse error on line 1, column 3: " + EXTRANEOUS),
    ],
)
def test_mount_errors(spec, message):
    with pytest.raises(MountError) as info:
        parse_mount(spec, same)
    assert str(info.value) == message


def test_mount_parse_time_pass_is_lenient():
    # without an expander, only CSV syntax and "from" are looked at (values may still hold variables)
    m = parse_mount("type=$T,target=$DIR,from=stage$,novalue", None)
    assert (m.type, m.target, m.from_) == ("bind", "", "stage$")


def test_devices():
    assert parse_device("nvidia.com/gpu=all") == parse_device("name=nvidia.com/gpu=all")
    d = parse_device("vendor.com/dev,required")
    assert (d.name, d.required) == ("vendor.com/dev", True)
    assert parse_device("name=x,required=false").required is False
    for spec, message in [
        ("name=a,name=b", "device name already set to a"),
        ("a,required=x", "invalid value for required: x"),
        ("a,nme=b", "unexpected key 'nme' in 'nme=b' (did you mean name?)"),
        ("", "failed to parse csv devices: EOF"),
    ]:
        with pytest.raises(MountError) as info:
            parse_device(spec)
        assert str(info.value) == message


def test_csv_fields():
    assert csv_fields("a,b") == ["a", "b"]
    assert csv_fields('"a,b",c') == ["a,b", "c"]
    assert csv_fields('"a ""q"" b"') == ['a "q" b']
    assert csv_fields("a,") == ["a", ""]
    assert csv_fields("a\n") == ["a"]


# --- Go compatibility helpers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("0", 0),
        ("1h2m3.5s", 3_723_500_000_000),
        ("1.5ms", 1_500_000),
        (".5s", 500_000_000),
        ("2us", 2_000),
        ("2\u00b5s", 2_000),
        ("-1m", -60_000_000_000),
        ("+3ns", 3),
    ],
)
def test_parse_duration(text, ns):
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text", ["", "-", "s", "1", "1.s.", "3x", "9999999999999h", "."])
def test_parse_duration_errors(text):
    with pytest.raises(ValueError, match="^time: "):
        parse_duration(text)


def test_ram_in_bytes():
    assert ram_in_bytes("1024") == 1024
    assert ram_in_bytes("1k") == ram_in_bytes("1KiB") == ram_in_bytes("1 kb") == 1024
    assert ram_in_bytes("1.5g") == 1536 << 20
    for bad in ("x", "1q", "1kbb", "-1"):
        with pytest.raises(ValueError):
            ram_in_bytes(bad)


def test_suggest():
    assert suggest("fro", ["from", "chown"], True) == "from"
    assert suggest("from", ["from", "fron"], True) is None  # exact match: the value was fine
    assert suggest("zzzzzz", ["from"], True) is None
