"""Word expansion (BuildKit's shell lexer) and which instruction fields get expanded."""

from __future__ import annotations

import pytest

from buildkitpy.frontend.dockerfile.expand import COPY_FROM_EXPANSION_ERROR, expand
from buildkitpy.frontend.dockerfile.instructions import (
    AddCommand,
    ArgCommand,
    CmdCommand,
    CopyCommand,
    EnvCommand,
    ExposeCommand,
    FromCommand,
    HealthCheckCommand,
    LabelCommand,
    OnbuildCommand,
    RunCommand,
    StopSignalCommand,
    UserCommand,
    VolumeCommand,
    WorkdirCommand,
    parse_instruction,
)
from buildkitpy.frontend.dockerfile.mounts import MountError
from buildkitpy.frontend.dockerfile.parser import parse
from buildkitpy.frontend.dockerfile.shell import (
    ExpansionBudget,
    Lex,
    ShellExpansionError,
    process_word,
    process_word_with_matches,
    process_words,
)
from buildkitpy.gocompat import is_space, quote

ENV = {"HOME": "/root", "NAME": "world", "EMPTY": "", "SP": "a  b", "PATHLIKE": "/usr/local/bin/tool.tar.gz"}


def word(src: str, env: dict[str, str] | None = None, escape: str = "\\") -> str:
    return process_word(src, ENV if env is None else env, escape)


def error(src: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ShellExpansionError) as info:
        word(src, env)
    return str(info.value)


# --- quoting and escapes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "out"),
    [
        ("plain", "plain"),
        ("it'  's quoted", "it  s quoted"),
        ('"double $NAME"', "double world"),
        ("'single $NAME'", "single $NAME"),
        ("a\\ b", "a b"),
        ("\\$NAME", "$NAME"),
        ("\\\\$NAME", "\\world"),
        ("\\'x", "'x"),
        ("x\\", "x"),  # a trailing escape is dropped
        ('"a\\"b"', 'a"b'),
        ('"a\\$b"', "a$b"),
        ('"a\\\\b"', "a\\b"),
        ('"a\\nb"', "a\\nb"),  # other escapes stay literal inside double quotes
        ("'a\\nb'", "a\\nb"),
        ("'\"'", '"'),
        ('"\'"', "'"),
        ("\u00e9t\u00e9 '\u2603'", "\u00e9t\u00e9 \u2603"),
    ],
)
def test_quotes_and_escapes(src, out):
    assert word(src) == out


@pytest.mark.parametrize(
    ("src", "reason"),
    [
        ("'open", "unexpected end of statement while looking for matching single-quote"),
        ('"open', "unexpected end of statement while looking for matching double-quote"),
        ('"trailing\\"', "unexpected end of statement while looking for matching double-quote"),
        ("\\\\'x", "unexpected end of statement while looking for matching single-quote"),
    ],
)
def test_unbalanced_quotes(src, reason):
    msg = error(src)
    assert msg.endswith(reason)
    assert msg.startswith("failed to process ")


def test_error_message_quotes_the_word_like_go():
    assert error("'it\"s\n") == (
        'failed to process "\'it\\"s\\n": unexpected end of statement while looking for matching single-quote'
    )


def test_backtick_escape_token():
    assert word("C:\\dir` x", escape="`") == "C:\\dir x"
    assert word("`$NAME \\$NAME", escape="`") == "$NAME \\world"
    assert word('"a`"b"', escape="`") == 'a"b'


# --- variables -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "out"),
    [
        ("$NAME", "world"),
        ("${NAME}", "world"),
        ("hello-$NAME!", "hello-world!"),
        ("${NAME}s", "worlds"),
        ("$NAMEs", ""),
        ("$UNSET.x", ".x"),
        ("$", "$"),
        ("$.", "$."),
        ("$/x", "$/x"),
        ("a$1b", "ab"),
        ("$12x", "x"),
        ("$@", ""),
        ("$HOME$NAME", "/rootworld"),
        ("\\${NAME}", "${NAME}"),
    ],
)
def test_plain_references(src, out):
    assert word(src) == out


@pytest.mark.parametrize(
    ("src", "out"),
    [
        # :- and - : default when unset; the colon also replaces an empty value
        ("${UNSET:-dflt}", "dflt"),
        ("${EMPTY:-dflt}", "dflt"),
        ("${NAME:-dflt}", "world"),
        ("${UNSET-dflt}", "dflt"),
        ("${EMPTY-dflt}", ""),
        # :+ and + : alternative when set (and, with the colon, non-empty)
        ("${NAME:+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${EMPTY+alt}", "alt"),
        ("${UNSET+alt}", ""),
        # ? and :? : the value, or an error (below)
        ("${NAME:?oops}", "world"),
        ("${EMPTY?oops}", ""),
        # nesting and quoting inside the word
        ("${UNSET:-$NAME}", "world"),
        ("${UNSET:-${ALSO:-deep}}x", "deepx"),
        ("${UNSET:-'a  b'}", "a  b"),
        ('${UNSET:-"$NAME"}', "world"),
        ("${UNSET:-\\}}", "}"),
        ("${NAME:+${NAME}:}", "world:"),
        ("${UNSET:-\\$NAME}", "$NAME"),
    ],
)
def test_default_and_alternative_modifiers(src, out):
    assert word(src) == out


def test_required_modifiers():
    assert error("${UNSET?}").endswith("UNSET: is not allowed to be unset")
    assert error("${UNSET:?}").endswith("UNSET: is not allowed to be unset")
    assert error("${EMPTY:?}").endswith("EMPTY: is not allowed to be empty")
    assert error("${UNSET?need $NAME}") == 'failed to process "${UNSET?need $NAME}": UNSET: need world'
    assert error("${EMPTY:?custom}").endswith("EMPTY: custom")


@pytest.mark.parametrize(
    ("src", "out"),
    [
        ("${PATHLIKE#*/}", "usr/local/bin/tool.tar.gz"),
        ("${PATHLIKE##*/}", "tool.tar.gz"),
        ("${PATHLIKE%.*}", "/usr/local/bin/tool.tar"),
        ("${PATHLIKE%%.*}", "/usr/local/bin/tool"),
        ("${PATHLIKE#/usr}", "/local/bin/tool.tar.gz"),
        ("${PATHLIKE#nomatch}", "/usr/local/bin/tool.tar.gz"),
        ("${PATHLIKE%?z}", "/usr/local/bin/tool.tar."),
        ("${PATHLIKE#}", "/usr/local/bin/tool.tar.gz"),
        ("${UNSET#x}", ""),
    ],
)
def test_prefix_and_suffix_removal(src, out):
    assert word(src) == out


def test_pattern_escapes_and_regexp_characters_are_literal():
    env = {"V": "a.b*c(d)[e]{f}^g|i+j\\k"}
    assert word("${V#a.b\\*c(d)[e]{f\\}^g|i+j}", env) == "\\k"
    assert word("${V%%\\\\*}", env) == "a.b*c(d)[e]{f}^g|i+j"
    assert word("${V#?.?}", env) == "*c(d)[e]{f}^g|i+j\\k"
    assert word("${V##a.b$E}", {**env, "E": "*"}) == ""  # a pattern from a variable is a pattern


@pytest.mark.parametrize(
    ("src", "out"),
    [
        ("${PATHLIKE/local/opt}", "/usr/opt/bin/tool.tar.gz"),
        ("${PATHLIKE//\\//:}", ":usr:local:bin:tool.tar.gz"),
        ("${PATHLIKE/\\//}", "usr/local/bin/tool.tar.gz"),
        ("${PATHLIKE/t*l/X}", "/usr/local/bin/X.tar.gz"),  # * is greedy
        ("${PATHLIKE//?.g?/-}", "/usr/local/bin/tool.ta-"),
        ("${PATHLIKE/nomatch/x}", "/usr/local/bin/tool.tar.gz"),
        ("${NAME//o/0}", "w0rld"),
        ("${NAME/$EMPTY/>}", ">world"),
        ("${UNSET/a/b}", ""),
    ],
)
def test_replacement(src, out):
    assert word(src) == out


def test_replacement_follows_gos_rules():
    # Go skips an empty match right after a match: one replacement for a pattern matching everything
    assert word("${NAME//*/X}") == "X"
    # the replacement is a Go regexp template: $0 is the match, $$ a dollar, other names empty,
    # a "$" that starts no name stays
    env = {"NAME": "world", "M": "[$0]", "D": "$$", "N": "<$x>", "B": "<${1}>", "L": "a$"}
    assert word("${NAME/o/$M}", env) == "w[o]rld"
    assert word("${NAME/o/$D}", env) == "w$rld"
    assert word("${NAME/o/$N}", env) == "w<>rld"
    assert word("${NAME/o/$B}", env) == "w<>rld"
    assert word("${NAME/o/$L}", env) == "wa$rld"
    # escapes in the pattern and replacement are kept raw, so "\$" reaches the template as "\$"
    assert word("${NAME/o/\\$}", env) == "w\\$rld"


@pytest.mark.parametrize(
    ("src", "reason"),
    [
        ("${", "syntax error: missing '}'"),
        ("${NAME", "unsupported modifier (\ufffd) in substitution"),
        ("${NAME:-x", "syntax error: missing '}'"),
        ("${NAME:-'x}'", "syntax error: missing '}'"),
        ("${}", "syntax error: bad substitution"),
        ("${:-x}", "syntax error: bad substitution"),
        ("${{x}}", "syntax error: bad substitution"),
        ("${NAME=x}", "unsupported modifier (=) in substitution"),
        ("${NAME:=x}", "unsupported modifier (:=) in substitution"),
        ("${NAME:x}", "unsupported modifier (:x) in substitution"),
        ("${NAME:#x}", "unsupported modifier (:#) in substitution"),
        ("${NAME:%%x}", "unsupported modifier (:%) in substitution"),
        ("${NAME:/a/b}", "unsupported modifier (:/) in substitution"),
        ("${NAME!}", "unsupported modifier (!) in substitution"),
        ("${NAME/a}", "syntax error: missing '/' in ${}"),
        ("${NAME/}", "syntax error: missing '/' in ${}"),
        ("${NAME/a/b", "syntax error: missing '}'"),
        ("${NAME#\\x}", "invalid pattern (\\x) in substitution: invalid escape '\\x'"),
        # suffix patterns are reversed (escape pairs kept) before use, and reported that way
        ("${NAME%a\\x}", "invalid pattern (\\xa) in substitution: invalid escape '\\x'"),
        ("${NAME/\\x/y}", "invalid pattern (\\x) in substitution: invalid escape '\\x'"),
    ],
)
def test_substitution_errors(src, reason):
    assert error(src) == f"failed to process {quote(src)}: {reason}"


# --- field splitting -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "fields"),
    [
        ("a b   c", ["a", "b", "c"]),
        ("  lead trail  ", ["lead", "trail"]),
        ("x$SP y", ["xa", "b", "y"]),
        ('x"$SP" y', ["xa  b", "y"]),
        ("'a b' \"c d\" e\\ f", ["a b", "c d", "e f"]),
        ("$UNSET", []),
        ('""', []),
        ("a ''", ["a"]),
        ("80/tcp ${PORT:-8080}", ["80/tcp", "8080"]),
        ("<< EOF  > out", ["<< EOF", ">", "out"]),
    ],
)
def test_process_words(src, fields):
    assert process_words(src, {**ENV, "PORT": ""}) == fields


def test_process_words_drops_text_before_a_modifier_expansion():
    # BuildKit's field buffer is shared with nested ${...} expansions and reset by them; we keep the
    # quirk so EXPOSE and heredoc detection split exactly as BuildKit does.
    assert process_words("abc${UNSET:-def}", {}) == ["def"]
    assert process_words("abc ${UNSET:-def}", {}) == ["abc", "def"]
    assert process_words("abc${NAME}", ENV) == ["abcworld"]


def test_word_keeps_inner_spaces():
    assert word("x$SP y") == "xa  b y"


# --- lexer options ---------------------------------------------------------------------------------


def test_raw_quotes_and_raw_escapes():
    lex = Lex(raw_quotes=True, raw_escapes=True)
    assert lex.process_word("'a b' \"$NAME\" c\\ d", ENV) == "'a b' \"world\" c\\ d"
    assert lex.process_words("'a b' c\\ d", ENV) == ["'a b'", "c\\ d"]


def test_skip_unset_env_keeps_references():
    lex = Lex(skip_unset_env=True)
    assert lex.process_word("$UNSET ${UNSET} ${UNSET:-x} ${UNSET/a/b} $NAME", ENV) == (
        "$UNSET ${UNSET} ${UNSET:-x} ${UNSET/a/b} world"
    )


def test_skip_process_quotes_for_heredoc_bodies():
    lex = Lex(skip_process_quotes=True)
    assert lex.process_word("echo '$NAME' \"$NAME\"\n", ENV) == "echo 'world' \"world\"\n"


def test_matched_and_unmatched_variables():
    result = process_word_with_matches("$NAME ${UNSET:-x} ${EMPTY-y} ${OTHER+z} '$QUOTED'", ENV)
    assert result.result == "world x   $QUOTED"
    assert result.matched == {"NAME", "EMPTY"}
    assert result.unmatched == {"UNSET", "OTHER"}


# --- expand(): which fields BuildKit expands -----------------------------------------------------------


def ins(src: str):
    result = parse(src)
    return parse_instruction(result.nodes[-1])


STAGE_ENV = {"V": "val", "EMPTY": "", "DIR": "/app", "U": "1000"}


def test_expand_env_and_label_keys_and_values():
    env = expand(ins('ENV $V=${V}x K="$V  $V" L=\\$V'), STAGE_ENV)
    assert isinstance(env, EnvCommand)
    assert [(kv.key, kv.value) for kv in env.env] == [("val", "valx"), ("K", "val  val"), ("L", "$V")]
    label = expand(ins("LABEL \"k $V\"='$V' other=$V"), STAGE_ENV)
    assert isinstance(label, LabelCommand)
    assert [(kv.key, kv.value) for kv in label.labels] == [("k val", "$V"), ("other", "val")]


def test_expand_does_not_modify_the_original():
    original = ins("WORKDIR $DIR")
    expand(original, STAGE_ENV)
    assert original.path == "$DIR"


def test_expand_copy_and_add():
    copy = expand(ins("COPY --chown=$U:$U --chmod=${M:-755} --exclude=$V src/$V $DIR/"), STAGE_ENV)
    assert isinstance(copy, CopyCommand)
    assert (copy.chown, copy.chmod) == ("1000:1000", "755")
    assert copy.source_paths == ["src/val"]
    assert copy.dest_path == "/app/"
    assert copy.exclude_patterns == ["$V"]  # exclude patterns are not expanded
    add = expand(ins("ADD --checksum=sha256:$V https://x/$V.tgz /$V"), STAGE_ENV)
    assert isinstance(add, AddCommand)
    assert (add.checksum, add.source_paths, add.dest_path) == ("sha256:val", ["https://x/val.tgz"], "/val")


def test_expand_copy_from_is_refused():
    with pytest.raises(ShellExpansionError) as info:
        expand(ins("COPY --from=$V a b"), STAGE_ENV)
    assert str(info.value) == COPY_FROM_EXPANSION_ERROR
    assert expand(ins("COPY --from=build a b"), STAGE_ENV).from_ == "build"


def test_expand_heredoc_bodies_unless_quoted():
    src = "FROM a\nCOPY <<EOF <<'RAW' /dst/\n$V 'q' \\$V \"${V}\"\nEOF\n$V\nRAW\n"
    copy = expand(parse_instruction(parse(src).nodes[1]), STAGE_ENV)
    assert [(c.path, c.data) for c in copy.source_contents] == [
        ("EOF", "val 'q' $V \"val\"\n"),
        ("RAW", "$V\n"),
    ]


def test_expand_simple_fields():
    assert expand(ins("WORKDIR $DIR/sub"), STAGE_ENV).path == "/app/sub"
    assert expand(ins("USER ${U}:${G:-0}"), STAGE_ENV).user == "1000:0"
    assert expand(ins("STOPSIGNAL SIG$V"), STAGE_ENV).signal == "SIGval"
    assert expand(ins('VOLUME ["$DIR", "/x"]'), STAGE_ENV).volumes == ["/app", "/x"]
    assert isinstance(expand(ins("USER a"), STAGE_ENV), UserCommand)
    assert isinstance(expand(ins("VOLUME a"), STAGE_ENV), VolumeCommand)
    assert isinstance(expand(ins("WORKDIR a"), STAGE_ENV), WorkdirCommand)
    assert isinstance(expand(ins("STOPSIGNAL 9"), STAGE_ENV), StopSignalCommand)


def test_expand_expose_splits_fields():
    expose = expand(ins("EXPOSE $P 80/tcp ${R:-1}"), {"P": "53/udp 443"})
    assert isinstance(expose, ExposeCommand)
    # ports are sorted as written (at parse time), then expanded
    assert expose.ports == ["53/udp", "443", "1", "80/tcp"]


def test_expand_arg_defaults_only():
    arg = expand(ins("ARG A=$V B C=${EMPTY:-d}"), STAGE_ENV)
    assert isinstance(arg, ArgCommand)
    assert [(a.key, a.value) for a in arg.args] == [("A", "val"), ("B", None), ("C", "d")]


def test_expand_from_with_global_args():
    stage = expand(ins("FROM --platform=$PLAT img:${TAG:-1} AS Base"), {"PLAT": "linux/arm64"})
    assert isinstance(stage, FromCommand)
    assert (stage.base_name, stage.platform, stage.stage_name) == ("img:1", "linux/arm64", "base")


def test_expand_run_mounts():
    run = ins("RUN --mount=type=$T,target=$DIR/cache,id=c-$V,sharing=locked echo $V")
    assert isinstance(run, RunCommand)
    assert run.mounts is None
    expanded = expand(run, {**STAGE_ENV, "T": "cache"})
    (mount,) = expanded.mounts
    assert (mount.type, mount.target, mount.cache_id, mount.cache_sharing) == (
        "cache",
        "/app/cache",
        "c-val",
        "locked",
    )
    assert expanded.cmd_line == ["echo $V"]  # the command itself is the shell's business
    with pytest.raises(MountError) as info:
        expand(run, {"T": "bogus"})
    assert str(info.value) == 'unsupported mount type "bogus"'


def test_not_expanded_instructions():
    for src in ("CMD echo $V", 'ENTRYPOINT ["$V"]', "HEALTHCHECK CMD $V", "ONBUILD RUN $V", 'SHELL ["$V"]'):
        before = ins(src)
        assert expand(before, STAGE_ENV) == before
    assert expand(ins("CMD echo $V"), STAGE_ENV).cmd_line == ["echo $V"]
    assert isinstance(ins("HEALTHCHECK CMD $V"), HealthCheckCommand)
    assert isinstance(ins("ONBUILD RUN $V"), OnbuildCommand)
    assert isinstance(ins("CMD $V"), CmdCommand)


def test_expand_reports_unmatched_names():
    unmatched: set[str] = set()
    expand(ins("ENV A=$NOPE B=${V} C=${ALSO:-x}"), STAGE_ENV, unmatched=unmatched)
    assert unmatched == {"NOPE", "ALSO"}


def test_expand_uses_the_files_escape_token():
    result = parse("# escape=`\nFROM a\nWORKDIR C:\\$V`$V\n")
    workdir = parse_instruction(result.nodes[1])
    assert expand(workdir, STAGE_ENV, escape_token=result.escape_token).path == "C:\\val$V"


def test_expansion_errors_surface():
    with pytest.raises(ShellExpansionError) as info:
        expand(ins("WORKDIR ${DIR:?must be set}"), {})
    assert str(info.value) == 'failed to process "${DIR:?must be set}": DIR: must be set'


def test_a_budget_bounds_what_the_lexers_of_one_conversion_add_together():
    budget = ExpansionBudget(limit=100)
    env = {"A": "x" * 40, "EMPTY": ""}
    assert Lex(budget=budget).process_word("$A$A", env) == "x" * 80  # adds 76
    assert budget.used == 76
    # words that do not grow (quotes, escapes, an empty value) spend nothing
    assert Lex(budget=budget).process_word("'a b' \\c ${EMPTY}d", env) == "a b c d"
    assert budget.used == 76
    raw = Lex(budget=budget, skip_process_quotes=True)  # another lexer of the same conversion
    with pytest.raises(ShellExpansionError, match="add more than 100 bytes in all") as err:
        raw.process_word("$A", env)
    assert err.value.reason.startswith("the expansions of this Dockerfile")
    # another conversion has a budget of its own
    assert Lex(budget=ExpansionBudget(limit=100)).process_word("$A", env) == "x" * 40


@pytest.mark.parametrize("value", ["", " ", "a", " a ", "a  b", "\u00a0a\u3000b\t", "ab cd  ef ", "  x"])
@pytest.mark.parametrize("before", ["", "$EMPTY", '""', "p", "p "])
def test_an_expanded_value_splits_into_fields_as_its_characters_would(value, before):
    """A value splits run by run exactly as it did character by character (Go's unicode spaces,
    white space at either end, after nothing, an empty expansion, empty quotes (a field begun with
    nothing in it yet) or literal text)."""
    env = {"V": value, "EMPTY": ""}
    word = f"{before}${{V}}q"

    def reference() -> list[str]:  # BuildKit's loop, a character at a time
        buf: list[str] = []
        words: list[str] = []
        in_word = before == '""'
        for ch in ("" if before in ("$EMPTY", '""') else before) + value + "q":
            if is_space(ch):
                if in_word and buf:
                    words.append("".join(buf))
                    buf.clear()
                    in_word = False
            else:
                buf.append(ch)
                in_word = True
        return words + (["".join(buf)] if buf else [])

    assert Lex().process_words(word, env) == reference()
