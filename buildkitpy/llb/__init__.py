"""The LLB builder: an immutable-state API producing ``pb.Definition`` exactly as BuildKit's
client/llb does for the same calls (same op bytes, so same digests).

    from buildkitpy import llb
    st = llb.image("busybox").run("echo hi > /x").root()
    st = st.file(llb.mkdir("/out", 0o755).copy(llb.local("context"), "x", "/out/"))
    definition = llb.marshal(st, platform="linux/amd64")
"""

from . import caps
from .constraints import OpOptions, ProgressGroup
from .definition import from_definition
from .errors import LLBError
from .exec import SSH, ExecState, Mount, RunOptions, Secret, bind, cache, secret, ssh, tmpfs
from .fileop import Chown, FileAction, copy, mkdir, mkfile, rm, symlink
from .marshal import head, marshal, required_caps
from .merge import diff, merge
from .platform import Platform, default_platform
from .reference import normalize_image_ref
from .source import git, http, image, local
from .sourcemap import SourceLocation, SourceMap
from .state import State, scratch
from .vertex import digest_of

__all__ = [
    "caps", "OpOptions", "ProgressGroup", "LLBError", "SSH", "ExecState", "Mount", "RunOptions", "Secret",
    "bind", "cache", "secret", "ssh", "tmpfs", "Chown", "FileAction", "copy", "mkdir", "mkfile", "rm",
    "symlink", "head", "marshal", "required_caps", "diff", "merge", "Platform", "default_platform",
    "normalize_image_ref", "git", "http", "image", "local", "SourceLocation", "SourceMap", "State",
    "scratch", "digest_of", "from_definition",
]
