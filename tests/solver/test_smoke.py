from tests.solver.llbutil import LLB, mkdir, mkfile


def test_mkfile_chain(env):
    b = LLB()
    a = b.file([mkfile("/a.txt", b"hello")])
    c = b.file([mkdir("/d", input=0, output=-1), mkfile("/d/b.txt", b"bee", input=1)], inputs=[a])
    assert env.tree(b.definition(c)) == {"a.txt": b"hello", "d": "dir", "d/b.txt": b"bee"}
