"""Where the three former pattern matchers disagreed, moby/patternmatcher decides (one test per case).

The expectations follow patternmatcher.go: ``New`` trims with ``strings.TrimSpace`` and cleans with
``filepath.Clean`` only; ``MatchesUsingParentResults`` (what fsutil's copy and BuildKit's content
checksums call) tests every parent directory; patterns compile to Go regexps lazily.
"""

import pytest

from buildkitpy.errors import InvalidArgument
from buildkitpy.fsutil.patterns import PatternError, PatternMatcher


def matched(patterns: list[str], path: str) -> bool:
    return PatternMatcher(patterns).matches_or_parent_matches(path)


# --- the former COPY --include/--exclude and checksum matcher (solver/patterns.py) ----------------------


def test_every_parent_directory_is_tested_not_only_the_one_at_the_patterns_depth():
    assert matched(["**/node_modules"], "a/b/node_modules/pkg/index.js")
    assert matched(["x/**/gen"], "x/y/z/gen/out.o")


def test_double_star_inside_a_component_spans_whole_directories_only():
    assert matched(["a**b"], "a/x/b")
    assert matched(["a**b"], "ab")
    assert not matched(["a**b"], "axb")


def test_escaped_bracket_inside_a_class():
    assert matched(["[\\]]"], "]")
    assert not matched(["[\\]]"], "\\]")


def test_a_leading_slash_is_kept_so_the_pattern_never_matches_a_relative_path():
    assert not matched(["/src"], "src")
    assert matched(["/src"], "/src")


def test_space_after_the_bang_belongs_to_the_pattern():
    assert matched(["*", "! keep"], "keep")  # the exception is for " keep"
    assert not matched(["*", "! keep"], " keep")


def test_regexp_wildcards_do_not_cross_newlines_and_dollar_is_end_of_text():
    assert not matched(["a/**/b"], "a/x\ny/b")
    assert not matched(["a?"], "ab\n")  # Python's "$" would match before the final newline


def test_malformed_patterns_are_invalid_arguments():
    for bad in ("a\\", "[]a]", "[-a]", "!"):
        with pytest.raises(InvalidArgument):
            PatternMatcher([bad])


# --- the former .dockerignore matcher vs the former fsutil one -------------------------------------------


def test_go_regexp_escapes():
    assert matched(["ab\\z"], "ab")  # \z is Go's end of text
    assert matched(["v\\d"], "v7")
    assert not matched(["v\\d"], "v\u0663")  # Go's \d is ASCII only
    with pytest.raises(PatternError, match="invalid escape"):
        matched(["a\\Z"], "a")  # Python's \Z, unknown to Go's regexp


def test_a_regexp_go_cannot_compile_fails_only_when_consulted():
    pm = PatternMatcher(["*", "[z-a]"])  # filepath.Match accepts it; regexp.Compile does not
    assert pm.matches_or_parent_matches("x")  # already matched: the second pattern is skipped
    with pytest.raises(PatternError) as e:
        PatternMatcher(["[z-a]"]).matches_or_parent_matches("x")
    assert e.value.go_message == "syntax error in pattern"


def test_only_go_white_space_is_trimmed():
    assert matched(["\x1ca"], "\x1ca")
    assert not matched(["\x1ca"], "a")
    assert matched(["\u3000a\u3000"], "a")


# --- could_match_below: pruning walks for include patterns ------------------------------------------------


@pytest.mark.parametrize(("patterns", "directory", "expected"), [
    (["src/*/x.go"], "src", True),
    (["src/*/x.go"], "src/pkg", True),
    (["src/*/x.go"], "docs", False),
    (["src/*/x.go"], "src/pkg/deeper", False),
    (["**/x.go"], "anything", True),
    (["!src", "docs/a"], "src", False),  # exceptions include nothing
    (["s[a/b]c"], "s[a", True),  # a class cut at "/" cannot rule the directory out
])
def test_could_match_below(patterns, directory, expected):
    assert PatternMatcher(patterns).could_match_below(directory) is expected
