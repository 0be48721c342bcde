""".dockerignore reading and matching (moby/patternmatcher semantics, not gitignore)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from buildkitpy.frontend.dockerignore import DockerIgnore, PatternError, clean_path, read_ignore_file

CONFORMANCE = Path(__file__).resolve().parents[2].parent / "shared" / "conformance"


def ignored(patterns: list[str], path: str) -> bool:
    return DockerIgnore(patterns).matches(path)


# --- reading the file -----------------------------------------------------------------------------------


def test_read_comments_blank_lines_and_trimming():
    data = "# comment\n\n   \n  *.log  \n\t# indented hash is a pattern\nbuild\n"
    assert read_ignore_file(data) == ["*.log", "# indented hash is a pattern", "build"]


def test_read_cleans_paths_and_keeps_exclusions():
    data = "/abs/path\n./rel\na/../b\nc//d/\n!  /keep\n!./x/./y\n/\n.\n../up\n"
    assert read_ignore_file(data) == ["abs/path", "rel", "b", "c/d", "!keep", "!x/y", "/", ".", "../up"]


def test_read_bytes_bom_and_crlf():
    assert read_ignore_file(b"\xef\xbb\xbf*.tmp\r\n!a.tmp\r\n") == ["*.tmp", "!a.tmp"]
    assert DockerIgnore.parse(b"*.tmp\n").patterns == ["*.tmp"]


def test_read_lone_bang():
    assert read_ignore_file("!\n! \n") == ["!", "!"]
    with pytest.raises(PatternError) as info:
        DockerIgnore.parse("!\n")
    assert str(info.value) == 'illegal exclusion pattern: "!"'


@pytest.mark.parametrize(
    ("path", "cleaned"),
    [
        ("", "."),
        ("a/./b/", "a/b"),
        ("/../x", "/x"),
        ("a/..", "."),
        ("../../a", "../../a"),
        ("//a//b", "/a/b"),
    ],
)
def test_clean_path(path, cleaned):
    assert clean_path(path) == cleaned


# --- matching -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        # anchored at the root; * and ? stay within one path element
        ("*.go", "main.go", True),
        ("*.go", "cmd/main.go", False),
        ("cmd/*.go", "cmd/main.go", True),
        ("cmd/*.go", "cmd/sub/main.go", False),
        ("?.txt", "a.txt", True),
        ("?.txt", "ab.txt", False),
        ("a?b", "a/b", False),
        # ** spans directories, including none
        ("**/*.go", "main.go", True),
        ("**/*.go", "a/b/c.go", True),
        ("a/**/b", "a/b", True),
        ("a/**/b", "a/x/y/b", True),
        ("a/**/b", "ab", False),
        ("**", "anything/at/all", True),
        ("**/gen", "gen", True),
        ("**/gen", "src/gen", True),
        ("**/gen", "srcgen", False),
        ("notes/**", "notes/x/y", True),
        ("notes/**", "notes", False),
        ("a**", "abc/d", True),
        # a matching directory ignores everything below it
        ("build", "build", True),
        ("build", "build/out/x.o", True),
        ("build", "src/build", False),
        ("dir/*", "dir/a/b/c", True),
        # classes and escapes
        ("[abc].txt", "b.txt", True),
        ("[abc].txt", "d.txt", False),
        ("[^abc].txt", "d.txt", True),
        ("[a-c]x", "cx", True),
        ("[a-c]x", "dx", False),
        ("\\*.txt", "*.txt", True),
        ("\\*.txt", "a.txt", False),
        # regexp characters are literal
        ("a+b(1).txt", "a+b(1).txt", True),
        ("a.b", "axb", False),
        ("x{1,2}$", "x{1,2}$", True),
        ("v1.*", "v1.2", True),
        ("v1.*", "v102", False),
        # paths are cleaned; the context root is never ignored
        ("a/b", "./a//b/", True),
        ("*", ".", False),
    ],
)
def test_single_pattern(pattern, path, expected):
    assert ignored([pattern], path) is expected


def test_exclusions_re_include_and_order_matters():
    patterns = ["*.md", "!README.md"]
    assert ignored(patterns, "CHANGES.md")
    assert not ignored(patterns, "README.md")
    assert ignored(["!README.md", "*.md"], "README.md")
    assert not ignored(["*.md", "!README.md", "!*.md"], "README.md")


def test_exclusion_inside_an_ignored_directory():
    di = DockerIgnore(["vendor", "!vendor/keep"])
    assert di.exclusions
    assert di.matches("vendor")
    assert di.matches("vendor/drop")
    assert not di.matches("vendor/keep")
    assert not di.matches("vendor/keep/inner")
    assert not DockerIgnore(["vendor"]).exclusions


def test_exclusion_of_a_parent_re_includes_children():
    assert not ignored(["**", "!src"], "src/main.go")
    assert ignored(["**", "!src"], "docs/x")


@pytest.mark.parametrize("pattern", ["[", "a[b", "[]", "[a-]", "[-a]", "[^]", "x\\", "[a\\"])
def test_bad_patterns(pattern):
    with pytest.raises(PatternError) as info:
        DockerIgnore([pattern])
    assert str(info.value) == "syntax error in pattern"


def test_patterns_are_kept_verbatim_for_the_daemon():
    di = DockerIgnore.parse("# c\n/a\n!b\n")
    assert di.patterns == ["a", "!b"]
    assert [(p.text, p.exclusion, p.kind) for p in di.compiled] == [
        ("a", False, "exact"),
        ("b", True, "exact"),
    ]


def test_pattern_kinds():
    kinds = {p.text: p.kind for p in DockerIgnore(["a/b", "a/**", "**/a", "a/*", "**/a/*"]).compiled}
    assert kinds == {"a/b": "exact", "a/**": "prefix", "**/a": "suffix", "a/*": "regexp", "**/a/*": "regexp"}


@pytest.mark.skipif(not (CONFORMANCE / "cases").is_dir(), reason="conformance corpus not present")
def test_conformance_dockerignore_case():
    case = CONFORMANCE / "cases/dockerignore-patterns"
    context = case / "context"
    di = DockerIgnore.parse((context / ".dockerignore").read_bytes())
    kept = set()
    for dirpath, dirnames, filenames in os.walk(context):
        for name in dirnames + filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), context)
            if not di.matches(rel):
                kept.add(rel)
    golden = json.loads((CONFORMANCE / "golden.json").read_text())["dockerignore-patterns"]["fs"]
    copied = {path.removeprefix("ctx/") for path in golden if path.startswith("ctx/")}
    # "notes/**" ignores what is below notes/ but not the directory itself, so notes/ stays
    assert kept == copied
