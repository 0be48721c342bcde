"""COPY include/exclude patterns through the real solver: every parent directory counts, as in
BuildKit's fsutil copy (patternmatcher's MatchesUsingParentResults), and checksums agree."""

from __future__ import annotations

from pathlib import Path

from buildkitpy.solver.cachekey import Selector
from buildkitpy.solver.contenthash import checksum
from tests.solver.llbutil import LLB, copy, mkdir, mkfile


def tree(b: LLB) -> str:
    return b.file([
        mkdir("/a/b/node_modules/pkg", parents=True, input=-1, output=-1),
        mkfile("/a/b/node_modules/pkg/index.js", b"js", input=0, output=-1),
        mkfile("/a/top.js", b"top", input=1, output=-1),
        mkdir("/x/y/z/gen", parents=True, input=2, output=-1),
        mkfile("/x/y/z/gen/out.o", b"obj", input=3, output=-1),
        mkfile("/x/y/z/gen/keep.txt", b"keep", input=4, output=0),
    ])


def test_include_of_a_nested_directory_copies_what_is_inside(env):
    b = LLB()
    c = b.file([copy("/", "/o", dirCopyContents=True, createDestPath=True,
                     include_patterns=["**/node_modules"])], inputs=[tree(b)])
    assert env.tree(b.definition(c)) == {
        "o": "dir", "o/a": "dir", "o/a/b": "dir", "o/a/b/node_modules": "dir",
        "o/a/b/node_modules/pkg": "dir", "o/a/b/node_modules/pkg/index.js": b"js",
    }


def test_exclude_below_a_deep_match_with_an_exception(env):
    b = LLB()
    c = b.file([copy("/x", "/o", dirCopyContents=True, createDestPath=True,
                     exclude_patterns=["y/**/gen", "!y/**/gen/keep.txt"])], inputs=[tree(b)])
    files = {p: v for p, v in env.tree(b.definition(c)).items() if v != "dir"}
    assert files == {"o/y/z/gen/keep.txt": b"keep"}


def test_checksum_ignores_files_below_an_excluded_deep_directory(tmp_path: Path):
    (tmp_path / "x/y/z/gen").mkdir(parents=True)
    (tmp_path / "x/y/z/gen/keep.txt").write_text("keep")
    out = tmp_path / "x/y/z/gen/out.o"
    out.write_text("one")
    sel = Selector("/x", exclude_patterns=("y/**/gen", "!y/**/gen/keep.txt"))
    before = checksum(tmp_path, sel)
    out.write_text("two")
    assert checksum(tmp_path, sel) == before
    (tmp_path / "x/y/z/gen/keep.txt").write_text("changed")
    assert checksum(tmp_path, sel) != before
