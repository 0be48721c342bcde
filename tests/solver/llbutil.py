"""A minimal hand-rolled LLB builder for solver tests (ops_pb2 only)."""

from __future__ import annotations

import hashlib

from buildkitpy.api import ops_pb2


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class LLB:
    def __init__(self) -> None:
        self.ops: list[bytes] = []
        self.metadata: dict[str, ops_pb2.OpMetadata] = {}

    def add(self, op: ops_pb2.Op, **meta: object) -> str:
        data = op.SerializeToString(deterministic=True)
        d = digest(data)
        if data not in self.ops:
            self.ops.append(data)
        if meta:
            md = ops_pb2.OpMetadata()
            if "name" in meta:
                md.description["llb.customname"] = str(meta["name"])
            if meta.get("ignore_cache"):
                md.ignore_cache = True
            self.metadata[d] = md
        return d

    def definition(self, result: str, index: int = 0) -> ops_pb2.Definition:
        terminal = ops_pb2.Op(inputs=[ops_pb2.Input(digest=result, index=index)])
        defn = ops_pb2.Definition()
        getattr(defn, "def").extend([*self.ops, terminal.SerializeToString(deterministic=True)])
        for k, v in self.metadata.items():
            defn.metadata[k].CopyFrom(v)
        return defn

    # -- file actions ------------------------------------------------------------------------------

    def file(self, actions: list[ops_pb2.FileAction], inputs: list[str] = (), **meta: object) -> str:
        op = ops_pb2.Op(inputs=[ops_pb2.Input(digest=i, index=0) for i in inputs],
                        file=ops_pb2.FileOp(actions=actions))
        return self.add(op, **meta)

    def merge(self, inputs: list[str]) -> str:
        merge = ops_pb2.MergeOp(inputs=[ops_pb2.MergeInput(input=n) for n in range(len(inputs))])
        op = ops_pb2.Op(inputs=[ops_pb2.Input(digest=i) for i in inputs], merge=merge)
        return self.add(op)

    def diff(self, lower: str, upper: str) -> str:
        op = ops_pb2.Op(inputs=[ops_pb2.Input(digest=lower), ops_pb2.Input(digest=upper)],
                        diff=ops_pb2.DiffOp(lower=ops_pb2.LowerDiffInput(input=0),
                                            upper=ops_pb2.UpperDiffInput(input=1)))
        return self.add(op)


def mkfile(path: str, data: bytes, mode: int = 0o644, *, input: int = -1, output: int = 0,
           owner: ops_pb2.ChownOpt | None = None, timestamp: int = -1) -> ops_pb2.FileAction:
    mk = ops_pb2.FileActionMkFile(path=path, data=data, mode=mode, timestamp=timestamp)
    if owner is not None:
        mk.owner.CopyFrom(owner)
    return ops_pb2.FileAction(input=input, secondaryInput=-1, output=output, mkfile=mk)


def mkdir(path: str, mode: int = 0o755, *, parents: bool = False, input: int = -1, output: int = 0,
          owner: ops_pb2.ChownOpt | None = None, timestamp: int = -1) -> ops_pb2.FileAction:
    mk = ops_pb2.FileActionMkDir(path=path, mode=mode, makeParents=parents, timestamp=timestamp)
    if owner is not None:
        mk.owner.CopyFrom(owner)
    return ops_pb2.FileAction(input=input, secondaryInput=-1, output=output, mkdir=mk)


def rm(path: str, *, input: int = 0, output: int = 0, allow_not_found: bool = False,
       wildcard: bool = False) -> ops_pb2.FileAction:
    return ops_pb2.FileAction(input=input, secondaryInput=-1, output=output, rm=ops_pb2.FileActionRm(
        path=path, allowNotFound=allow_not_found, allowWildcard=wildcard))


def symlink(old: str, new: str, *, input: int = -1, output: int = 0, timestamp: int = -1,
            owner: ops_pb2.ChownOpt | None = None) -> ops_pb2.FileAction:
    s = ops_pb2.FileActionSymlink(oldpath=old, newpath=new, timestamp=timestamp)
    if owner is not None:
        s.owner.CopyFrom(owner)
    return ops_pb2.FileAction(input=input, secondaryInput=-1, output=output, symlink=s)


def copy(src: str, dest: str, *, input: int = -1, secondary: int = 0, output: int = 0,
         **opts: object) -> ops_pb2.FileAction:
    c = ops_pb2.FileActionCopy(src=src, dest=dest, mode=-1, timestamp=-1)
    for k, v in opts.items():
        if k in ("include_patterns", "exclude_patterns", "required_paths"):
            getattr(c, k).extend(v)
        elif k == "owner":
            c.owner.CopyFrom(v)
        else:
            setattr(c, k, v)
    return ops_pb2.FileAction(input=input, secondaryInput=secondary, output=output, copy=c)


def chown_ids(uid: int, gid: int) -> ops_pb2.ChownOpt:
    return ops_pb2.ChownOpt(user=ops_pb2.UserOpt(byID=uid), group=ops_pb2.UserOpt(byID=gid))


def chown_names(user: str, group: str | None, input: int) -> ops_pb2.ChownOpt:
    o = ops_pb2.ChownOpt(user=ops_pb2.UserOpt(byName=ops_pb2.NamedUserOpt(name=user, input=input)))
    if group is not None:
        o.group.CopyFrom(ops_pb2.UserOpt(byName=ops_pb2.NamedUserOpt(name=group, input=input)))
    return o
