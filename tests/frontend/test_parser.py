"""The Dockerfile parser: logical lines, directives, comments, JSON/shell forms, flags, heredocs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from buildkitpy.frontend.dockerfile.instructions import parse_dockerfile
from buildkitpy.frontend.dockerfile.parser import (
    EMPTY_CONTINUATION_URL,
    DockerfileParseError,
    Heredoc,
    Node,
    chomp_heredoc_content,
    heredocs_from_line,
    parse,
    parse_directive,
    parse_heredoc,
)

CONFORMANCE = Path(__file__).resolve().parents[2].parent / "shared" / "conformance"


def nodes(src: str | bytes) -> list[Node]:
    return parse(src).nodes


def one(src: str) -> Node:
    (node,) = nodes(src)
    return node


def parse_error(src: str | bytes) -> DockerfileParseError:
    with pytest.raises(DockerfileParseError) as info:
        parse(src)
    return info.value


# --- basics ----------------------------------------------------------------------------------------


def test_keywords_lines_and_original_text():
    result = parse("FROM busybox AS base\n\nrun echo hi\nCopy a b\n")
    assert [n.keyword for n in result.nodes] == ["from", "run", "copy"]
    assert [n.value for n in result.nodes] == ["FROM", "run", "Copy"]
    assert [(n.start_line, n.end_line) for n in result.nodes] == [(1, 1), (3, 3), (4, 4)]
    assert result.nodes[0].args == ["busybox", "AS", "base"]
    assert result.nodes[1].original == "run echo hi"
    assert (result.start_line, result.end_line) == (1, 4)
    assert result.escape_token == "\\"


def test_leading_and_trailing_white_space_is_ignored():
    node = one("   \tRUN   echo   hi   \n")
    assert node.args == ["echo   hi"]
    assert node.original == "RUN   echo   hi   "


def test_crlf_line_endings():
    result = parse(b"FROM a\r\nRUN echo \\\r\n  x\r\n")
    assert result.nodes[1].args == ["echo   x"]
    assert result.nodes[1].end_line == 3


def test_byte_order_mark_is_dropped():
    assert one(b"\xef\xbb\xbfFROM scratch").value == "FROM"


def test_invalid_utf8_survives():
    node = one(b"LABEL a=\xff\n")
    assert node.args[1].encode("utf-8", "surrogateescape") == b"\xff"


def test_no_instructions_is_an_error():
    for src in ("", "\n\n", "# only a comment\n", "# escape=`\n"):
        err = parse_error(src)
        assert str(err) == "file with no instructions"
    assert parse_error("\n# a\n\n").line == 3


def test_overlong_line_is_rejected_like_gos_scanner():
    def label(size: int) -> bytes:
        return b"LABEL x=" + b"a" * (size - 8)

    parse(b"FROM a\n" + label(65535) + b"\nRUN x\n")  # 65536 bytes with its newline: fits
    err = parse_error(b"FROM a\n" + label(65536) + b"\nRUN x\n")
    assert str(err) == "dockerfile line greater than max allowed size of 65535"
    assert err.line == 1
    # A last line without newline must leave one byte of the buffer free.
    parse(b"FROM a\n" + b"#" * 65535)
    assert "max allowed size" in str(parse_error(b"FROM a\n" + b"#" * 65536))


def test_unknown_instruction_parses_and_fails_when_typed():
    node = one("FROBNICATE the build")
    assert node.keyword == "frobnicate"
    assert node.args == []
    with pytest.raises(DockerfileParseError) as info:
        parse_dockerfile(b"FROM busybox\nRUN echo ok\nFROBNICATE the build\n")
    assert str(info.value) == "dockerfile parse error on line 3: unknown instruction: FROBNICATE"
    assert info.value.line == 3
    assert info.value.reason == "unknown instruction: FROBNICATE"
    assert info.value.text == "FROBNICATE the build"


def test_dump_matches_buildkits_sexp_format():
    result = parse('FROM a\nCOPY --from=b x y\nONBUILD RUN ["echo", "x"]\nENV k=v\n')
    assert [n.dump() for n in result.nodes] == [
        'from "a"',
        'copy ["--from=b"] "x" "y"',
        'onbuild (run "echo" "x")',
        'env "k" "v" "="',
    ]


# --- comments --------------------------------------------------------------------------------------


def test_comments_are_dropped_and_remembered_for_the_next_instruction():
    result = parse("# stage doc\n# more\nFROM a AS b\n# for run\n\n#\n# after reset\nRUN x\nRUN y\n")
    a, b, c = result.nodes
    assert a.comments == ["stage doc", "more"]
    assert b.comments == ["after reset"]  # an empty "#" line starts over
    assert c.comments == []


def test_indented_comment_is_a_comment():
    assert [n.keyword for n in nodes("FROM a\n   # RUN not me\nRUN me\n")] == ["from", "run"]


def test_hash_inside_instruction_is_not_a_comment():
    assert one("RUN echo # not a comment").args == ["echo # not a comment"]


# --- directives ------------------------------------------------------------------------------------


def test_directives_are_read_from_the_top():
    result = parse("# syntax=docker/dockerfile:1\n# check=skip=all\n# escape=`\nFROM a\n")
    assert [(d.name, d.value, d.line) for d in result.directives] == [
        ("syntax", "docker/dockerfile:1", 1),
        ("check", "skip=all", 2),
        ("escape", "`", 3),
    ]
    assert result.escape_token == "`"
    assert result.directive("check") == "skip=all"
    assert result.nodes[0].comments == []  # directive lines are not comments


def test_directive_keys_are_case_insensitive_and_spacing_is_free():
    result = parse("#   ESCAPE  =   `   \nFROM a\n")
    assert result.escape_token == "`"
    assert result.directives[0].name == "escape"


def test_directive_scanning_stops_at_first_other_line():
    # after an instruction, an ordinary comment, an unknown directive or an empty line, "# escape=" is
    # just a comment
    for prefix in ("FROM a\n", "# hello\n", "# unknown=1\n", "\n"):
        result = parse(prefix + "# escape=`\nFROM b\n")
        assert result.escape_token == "\\", prefix
        assert result.directive("escape") is None


def test_indented_directive_is_still_a_directive():
    assert parse("  # escape=`\nFROM a\n").escape_token == "`"


def test_repeated_directive_is_an_error():
    err = parse_error("# escape=`\n# escape=\\\nFROM a\n")
    assert str(err) == "only one escape parser directive can be used"
    assert err.line == 2
    err = parse_error("# syntax=a\n# Syntax=b\nFROM a\n")
    assert str(err) == "only one syntax parser directive can be used"


def test_invalid_escape_token():
    assert str(parse_error("# escape=x\nFROM a\n")) == "invalid escape token 'x' does not match ` or \\"


def test_backtick_escape_changes_continuation_and_literal_backslashes():
    src = (CONFORMANCE / "cases/parse-escape-backtick/Dockerfile").read_bytes()
    result = parse(src)
    assert result.escape_token == "`"
    env, run, label = result.nodes[1:]
    assert env.args == ["WINPATH", "C:\\Users\\app", "="]
    assert run.args == ["printf '%s\\n' one     two > /out"]
    assert (run.start_line, run.end_line) == (4, 5)
    assert label.args == ["path", '"D:\\data"', "="]


def test_parse_directive_like_the_frontend_reads_syntax():
    assert parse_directive("syntax", b"#!/usr/bin/env buildctl\n# syntax=x/y:1\nFROM a\n").value == "x/y:1"
    assert parse_directive("check", "# check=error=true\nFROM a").line == 1
    assert parse_directive("syntax", "FROM a\n# syntax=x") is None


# --- line continuation -----------------------------------------------------------------------------


def test_continuation_keeps_indentation_of_following_lines():
    src = (CONFORMANCE / "cases/parse-line-continuation/Dockerfile").read_bytes()
    run, env = parse(src).nodes[1:]
    assert run.args == ["echo one     two   three > /out"]
    assert (run.start_line, run.end_line) == (2, 4)
    assert env.args == ["JOINED", "ab", "="]
    assert (env.start_line, env.end_line) == (5, 6)


def test_comment_lines_inside_a_continuation_are_dropped():
    node = nodes("FROM a\nRUN one \\\n# a comment\n    # indented comment\n  two\n")[1]
    assert node.args == ["one   two"]
    assert (node.start_line, node.end_line) == (2, 5)


def test_empty_continuation_lines_are_skipped_with_a_warning():
    result = parse("FROM a\nRUN one \\\n\n   \n  two \\\n\n  three\nRUN ok\n")
    run = result.nodes[1]
    assert run.args == ["one   two   three"]
    assert (run.start_line, run.end_line) == (2, 7)
    (warning,) = result.warnings
    assert warning.short == "Empty continuation line found in: RUN one   two   three"
    assert warning.detail == "Empty continuation lines will become errors in a future release"
    assert warning.url == EMPTY_CONTINUATION_URL
    assert warning.line == 7


def test_continuation_at_end_of_file():
    node = nodes("FROM a\nRUN something \\")[1]
    assert node.args == ["something"]


def test_escaped_escape_at_end_of_line_is_not_a_continuation():
    result = parse("FROM a\nENV A=x\\\\\nENV B=y\n")
    assert [n.args for n in result.nodes[1:]] == [["A", "x\\\\", "="], ["B", "y", "="]]


def test_trailing_blanks_after_the_escape_still_continue():
    assert nodes("FROM a\nRUN a \\  \t\nb\n")[1].args == ["a b"]


def test_lone_escape_line_continues():
    assert nodes("FROM a\nRUN a \\\n\\\nb\n")[1].args == ["a b"]


# --- JSON and shell forms --------------------------------------------------------------------------


def test_exec_form():
    node = one('RUN ["/bin/sh", "-c", "echo \\"$X\\""]')
    assert node.json is True
    assert node.args == ["/bin/sh", "-c", 'echo "$X"']


def test_json_with_unicode_and_escapes():
    node = one('CMD ["\\u2603", "tab\\there", "sl\\/ash"]')
    assert node.args == ["\u2603", "tab\there", "sl/ash"]


def test_empty_json_array():
    node = one("CMD []")
    assert (node.json, node.args) == (True, [])


@pytest.mark.parametrize(
    "args",
    [
        "['single', 'quoted']",
        '["missing" "comma"]',
        '["unterminated"',
        '["unterminated string]',
        '["x"] || echo fallback > /out',
        '["NaN", NaN]',
        '["big", 1e999]',
        "[Infinity]",
        '"[\\"echo\\"]"',
    ],
)
def test_invalid_json_falls_back_to_shell_form(args):
    node = one(f"CMD {args}")
    assert node.json is False
    assert node.args == [args]


def test_conformance_invalid_json_case():
    src = (CONFORMANCE / "cases/parse-invalid-json-shell-fallback/Dockerfile").read_bytes()
    cmd, entrypoint, run = parse(src).nodes[1:]
    assert cmd.args == ["['single', 'quoted']"] and not cmd.json
    assert entrypoint.args == ['["missing" "comma"]']
    assert run.args == ['["echo" "x"] || echo fallback > /out']


@pytest.mark.parametrize("args", ['["a", 1]', '["a", ["b"]]', "[null]", '[{"a": "b"}]', "[true]"])
def test_json_array_of_non_strings_is_an_error(args):
    err = parse_error(f"FROM a\nRUN {args}\n")
    assert str(err) == "when using JSON array syntax, arrays must be comprised of strings only"
    assert err.line == 2


def test_copy_json_and_whitespace_forms():
    assert one('COPY ["a b", "/dst"]').args == ["a b", "/dst"]
    assert one("COPY  a\tb   /dst").args == ["a", "b", "/dst"]
    assert one('VOLUME ["/a", "/b"]').args == ["/a", "/b"]
    assert one("VOLUME /a /b").args == ["/a", "/b"]
    err = parse_error('ADD ["a", 2]')
    assert str(err) == "when using JSON array syntax, arrays must be comprised of strings only"


def test_shell_form_keeps_text_verbatim():
    assert one("RUN echo 'a  b' \"c\" \\$x").args == ["echo 'a  b' \"c\" \\$x"]


def test_string_instructions():
    assert one("WORKDIR  /a b ").args == ["/a b"]
    assert one("USER app:app").args == ["app:app"]
    assert one("MAINTAINER Jane Doe <j@d>").args == ["Jane Doe <j@d>"]
    assert one("STOPSIGNAL SIGKILL").args == ["SIGKILL"]
    assert one("WORKDIR").args == []


def test_from_and_expose_split_on_white_space():
    assert one("FROM --platform=$P img:1 AS x").args == ["img:1", "AS", "x"]
    assert one("EXPOSE 80/tcp  443").args == ["80/tcp", "443"]


def test_healthcheck_type_and_command():
    node = one("HEALTHCHECK --interval=5s CMD curl -f http://x/")
    assert node.flags == ["--interval=5s"]
    assert node.args == ["CMD", "curl -f http://x/"]
    assert node.json is False
    node = one('HEALTHCHECK CMD ["curl", "x"]')
    assert (node.args, node.json) == (["CMD", "curl", "x"], True)
    assert one("HEALTHCHECK NONE").args == ["NONE"]
    assert one("HEALTHCHECK").args == []


# --- ENV / LABEL / ARG words ---------------------------------------------------------------------


def test_env_key_value_pairs_keep_quotes_for_later_expansion():
    node = one('ENV A=1 B="two words" C=three\\ x D=')
    assert node.args == ["A", "1", "=", "B", '"two words"', "=", "C", "three\\ x", "=", "D", "", "="]


def test_env_legacy_form_takes_the_rest_of_the_line():
    assert one("ENV GREETING hello   big world").args == ["GREETING", "hello   big world", ""]
    assert one("LABEL  k  v").args == ["k", "v", ""]


def test_env_errors():
    assert str(parse_error("ENV ONLYKEY")) == "ENV must have two arguments"
    assert str(parse_error("LABEL ONLYKEY")) == "LABEL must have two arguments"
    err = parse_error("FROM a\nENV a=b c")
    assert str(err) == 'Syntax error - can\'t find = in "c". Must be of the form: name=value'
    assert err.line == 2
    assert one("ENV").args == []


def test_quoted_words_may_contain_spaces_and_escaped_quotes():
    node = one("""LABEL "quoted key"=v 'a b'="c \\" d" e='x\\'""")
    assert node.args == ['"quoted key"', "v", "=", "'a b'", '"c \\" d"', "=", "e", "'x\\'", "="]


def test_arg_words():
    assert one('ARG A B=1 C="x y" D=').args == ["A", "B=1", 'C="x y"', "D="]


def test_backtick_escape_in_words():
    result = parse('# escape=`\nFROM a\nLABEL a=b` c d="x`"y"\n')
    assert result.nodes[1].args == ["a", "b` c", "=", "d", '"x`"y"', "="]


# --- flags -----------------------------------------------------------------------------------------


def test_flags_are_peeled_off_the_front():
    node = one("COPY --from=build --chown=1:2 --link a /b")
    assert node.flags == ["--from=build", "--chown=1:2", "--link"]
    assert node.args == ["a", "/b"]


def test_flags_remove_quotes_and_escapes():
    node = one("""RUN --mount="type=bind,target=/a b" --x='q' --y=a\\ b echo""")
    assert node.flags == ["--mount=type=bind,target=/a b", "--x=q", "--y=a b"]
    assert node.args == ["echo"]


def test_double_dash_ends_flags():
    node = one("COPY --link -- --weird /dst")
    assert node.flags == ["--link"]
    assert node.args == ["--weird", "/dst"]


def test_flags_after_arguments_are_arguments():
    node = one("COPY a --chown=1 /b")
    assert node.flags == []
    assert node.args == ["a", "--chown=1", "/b"]


def test_single_dash_word_ends_flags():
    node = one("RUN --network=none -x")
    assert node.flags == ["--network=none"]
    assert node.args == ["-x"]


def test_only_flags():
    node = one("CMD --doit")
    assert (node.flags, node.args) == (["--doit"], [])


# --- ONBUILD ------------------------------------------------------------------------------------------


def test_onbuild_wraps_a_sub_instruction():
    node = one("ONBUILD RUN --mount=type=cache,target=/c echo hi")
    assert node.keyword == "onbuild"
    assert node.sub is not None
    assert node.sub.keyword == "run"
    assert node.sub.flags == ["--mount=type=cache,target=/c"]
    assert node.sub.args == ["echo hi"]
    assert node.sub.original == "RUN --mount=type=cache,target=/c echo hi"
    assert one("ONBUILD").sub is None


def test_onbuild_flags_belong_to_onbuild():
    node = one("ONBUILD --x COPY a b")
    assert node.flags == ["--x"]
    assert node.sub.args == ["a", "b"]


# --- heredocs ----------------------------------------------------------------------------------------


def test_run_heredoc():
    src = (CONFORMANCE / "cases/heredoc-run-basic/Dockerfile").read_bytes()
    run = parse(src).nodes[1]
    assert run.args == ["<<EOF"]
    assert run.heredocs == [Heredoc(name="EOF", content="echo line1 > /out\necho line2 >> /out\n")]
    assert (run.start_line, run.end_line) == (2, 5)


def test_dash_heredoc_keeps_tabs_until_used():
    src = (CONFORMANCE / "cases/heredoc-dash-tab-strip/Dockerfile").read_bytes()
    copy, run = parse(src).nodes[1:]
    (doc,) = copy.heredocs
    assert doc.chomp and doc.expand and doc.name == "EOT"
    assert doc.content == "\tindented with tabs\n\t\tdouble tab\n    spaces stay\n"
    assert chomp_heredoc_content(doc.content) == "indented with tabs\ndouble tab\n    spaces stay\n"
    assert (copy.start_line, copy.end_line) == (2, 6)
    assert run.heredocs[0].content == "\techo tab-stripped script > /ran\n"


def test_copy_with_several_heredocs():
    result = parse("FROM a\nCOPY <<one <<two /dest/\nfirst\none\nsecond\ntwo\nRUN x\n")
    copy = result.nodes[1]
    assert [(h.name, h.content) for h in copy.heredocs] == [("one", "first\n"), ("two", "second\n")]
    assert copy.args == ["<<one", "<<two", "/dest/"]
    assert (copy.start_line, copy.end_line) == (2, 6)
    assert result.nodes[2].start_line == 7


@pytest.mark.parametrize(
    ("word", "name", "expand"),
    [
        ("<<EOF", "EOF", True),
        ('<<"EOF"', "EOF", False),
        ("<<'EOF'", "EOF", False),
        ("<<E'O'F", "EOF", False),
        ("<<-'EOF'", "EOF", False),
        ("<<E\\OF", "EOF", True),  # an escape is not quoting, for BuildKit
        ("<<$VAR", "$VAR", True),
    ],
)
def test_heredoc_names_and_quoting(word, name, expand):
    doc = parse_heredoc(word)
    assert doc is not None
    assert (doc.name, doc.expand) == (name, expand)


def test_heredoc_fd_and_blanks():
    assert parse_heredoc("3<<EOF").fd == 3
    assert parse_heredoc("<<  EOF").name == "EOF"
    assert parse_heredoc("<<-  EOF").chomp
    for word in ("EOF", "<<", "<<-", "<EOF", "<<<EOF", "<<EOF sh"):
        assert parse_heredoc(word) is None, word


def test_unbalanced_quote_in_heredoc_name():
    with pytest.raises(DockerfileParseError):
        parse_heredoc("<<'EOF")


def test_heredocs_from_line():
    assert [h.name for h in heredocs_from_line("RUN <<A cat - <<-'B' > f")] == ["A", "B"]
    assert [h.name for h in heredocs_from_line("RUN << EOF > x")] == ["EOF"]
    assert heredocs_from_line("RUN '<<EOF'") == []
    assert heredocs_from_line('RUN "<<EOF"') == []
    assert heredocs_from_line("RUN <<EOF 'unbalanced") == []


def test_heredoc_terminator_must_match_exactly():
    src = "FROM a\nRUN <<EOF\n EOF\nEOF \nEOF\n"
    assert parse(src).nodes[1].heredocs[0].content == " EOF\nEOF \n"


def test_dash_heredoc_terminator_may_be_tab_indented():
    src = "FROM a\nRUN <<-EOF\n\tx\n\t\tEOF\nRUN y\n"
    result = parse(src)
    assert result.nodes[1].heredocs[0].content == "\tx\n"
    assert result.nodes[2].args == ["y"]


def test_heredoc_body_keeps_comments_and_line_endings():
    src = b"FROM a\nRUN <<EOF\n# not a comment\r\nline \\\nEOF\n"
    assert parse(src).nodes[1].heredocs[0].content == "# not a comment\r\nline \\\n"


def test_heredoc_only_for_run_copy_add_in_shell_form():
    assert one("USER <<EOF").heredocs == []
    assert one('RUN ["<<EOF"]').heredocs == []
    assert one("ENV a=<<EOF").heredocs == []


def test_heredoc_in_onbuild_trigger():
    node = nodes("FROM a\nONBUILD RUN <<EOF\necho hi\nEOF\n")[1]
    assert node.heredocs == [Heredoc(name="EOF", content="echo hi\n")]
    assert node.end_line == 4


def test_heredoc_after_continuation():
    node = nodes("FROM a\nRUN --network=none \\\n  <<EOF\nbody\nEOF\n")[1]
    assert node.flags == ["--network=none"]
    assert node.heredocs[0].content == "body\n"
    assert (node.start_line, node.end_line) == (2, 5)


def test_unterminated_heredoc():
    err = parse_error("FROM a\nRUN <<EOF\necho\n")
    assert str(err) == "unterminated heredoc"
    assert (err.line, err.end_line) == (2, 3)
    err = parse_error("FROM a\nCOPY <<A <<B /x\na\nA\nb\n")
    assert str(err) == "unterminated heredoc"
    assert (err.line, err.end_line) == (2, 5)


# --- the conformance corpus ----------------------------------------------------------------------------


def _cases() -> list[Path]:
    return sorted((CONFORMANCE / "cases").glob("*/Dockerfile"))


def _expects_parse_failure(case: Path) -> bool:
    golden = json.loads((CONFORMANCE / "golden.json").read_text())[case.name]
    error = golden.get("error", "")
    # BuildKit reports a missing FROM without the "dockerfile parse error" prefix
    return golden.get("expect") == "fail" and (
        "dockerfile parse error" in error or error.endswith("no build stage in current context"))


@pytest.mark.skipif(not (CONFORMANCE / "cases").is_dir(), reason="conformance corpus not present")
@pytest.mark.parametrize("dockerfile", _cases(), ids=lambda p: p.parent.name)
def test_conformance_dockerfiles(dockerfile: Path):
    data = dockerfile.read_bytes()
    if _expects_parse_failure(dockerfile.parent):
        golden = json.loads((CONFORMANCE / "golden.json").read_text())[dockerfile.parent.name]
        with pytest.raises(DockerfileParseError) as info:
            parse_dockerfile(data)
        assert golden["error"].endswith(str(info.value))
    else:
        df = parse_dockerfile(data)
        assert df.stages
