"""moby/patternmatcher semantics (dockerignore syntax), as the Go tests describe them."""

import pytest

from buildkitpy.fsutil.patterns import PatternError, PatternMatcher, glob_match, go_clean


@pytest.mark.parametrize(("path", "clean"), [
    ("", "."), ("a//b", "a/b"), ("./a/./b/", "a/b"), ("a/../../b", "../b"), ("/../a", "/a"),
    ("//a", "/a"), ("a/b/..", "a"), ("..", ".."),
])
def test_go_clean(path, clean):
    assert go_clean(path) == clean


@pytest.mark.parametrize(("patterns", "path", "expected"), [
    (["*.go"], "main.go", True),
    (["*.go"], "pkg/main.go", False),  # '*' never crosses '/'
    (["**/*.go"], "pkg/sub/main.go", True),
    (["**/*.go"], "main.go", True),
    (["docs"], "docs/a/readme.md", True),  # a matched directory matches what is inside
    (["docs", "!docs/keep.md"], "docs/keep.md", False),
    (["docs", "!docs/keep.md"], "docs/other.md", True),
    (["*", "!src"], "src/main.go", False),
    (["*", "!src"], "README", True),
    (["a/**"], "a/b/c", True),
    (["a/**"], "a", False),
    (["**"], "anything/at/all", True),
    (["dir/*"], "dir/file/below", True),
    (["?.txt"], "a.txt", True),
    (["?.txt"], "ab.txt", False),
    (["[a-c].txt"], "b.txt", True),
    (["[a-c].txt"], "d.txt", False),
    (["[^a].txt"], "a.txt", False),
    (["a\\*b"], "a*b", True),
    (["a\\*b"], "axb", False),
    (["  spaced  "], "spaced", True),
    (["./dot/"], "dot/x", True),
    (["**/node_modules"], "a/b/node_modules/x", True),
    (["**/node_modules"], "node_modules", True),
    (["a.(b)+c"], "a.(b)+c", True),  # regexp metacharacters are literal
    (["a.b"], "axb", False),
    (["*.txt", "!important.txt", "*"], "important.txt", True),  # later patterns win
])
def test_matches_or_parent_matches(patterns, path, expected):
    assert PatternMatcher(patterns).matches_or_parent_matches(path) is expected


def test_parent_results_agree_with_full_evaluation():
    pm = PatternMatcher(["docs", "!docs/keep", "**/*.log", "!**/keep.log", "build/*/out"])
    tree = ["docs", "docs/keep", "docs/keep/a.log", "docs/x", "src", "src/keep.log", "src/a.log",
            "build", "build/x", "build/x/out", "build/x/out/f", "build/x/other"]
    infos: dict[str, list[bool]] = {}
    for p in tree:
        parent = p.rpartition("/")[0]
        m, info = pm.matches_using_parent_results(p, infos.get(parent))
        infos[p] = info
        assert m is pm.matches_or_parent_matches(p), p


@pytest.mark.parametrize("bad", ["[", "a[", "[]a]", "[-a]", "a\\", "!", "[a-"])
def test_bad_patterns_are_reported(bad):
    with pytest.raises(PatternError) as e:
        PatternMatcher([bad])
    assert "pattern" in str(e.value)


def test_glob_match_one_component():
    assert glob_match("Docker*", "Dockerfile")
    assert not glob_match("Docker*", "dockerfile")
    assert glob_match("[Dd]ocker?ile", "dockerfile")
    assert glob_match("a\\-b", "a-b")
    assert not glob_match("[", "[")
