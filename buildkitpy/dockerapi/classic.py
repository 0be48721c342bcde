"""The classic builder (``POST /build`` with ``version=1``): one instruction at a time.

Each step is built by our own pipeline, not a second implementation: the Dockerfile cut after the
step goes through the ``dockerfile.v0`` frontend and the solver (over our Control API, with the
context served from the unpacked upload), and the result is exported into the content store as an
image whose parent is the previous step's image. The solver's cache makes the steps already built
free, so the work of step N is step N's own. Before building a step, the classic cache is asked:
same parent image and same instruction (for COPY/ADD also the same source content) → the image
that step made before, printed as `` ---> Using cache``.

The output is the classic builder's: ``Step i/n : <instruction>``, `` ---> Running in <id>`` and the
command's output for RUN, `` ---> <image id>`` after each step, ``Successfully built``/``tagged``, an
``aux`` message with each stage's image ID, and ``error`` + ``errorDetail`` when it fails.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from buildkitpy.dockerapi.http import ClientGone
from buildkitpy.dockerapi.imagestore import ImageRecord, ImageStore, familiar, normalize_tag
from buildkitpy.dockerapi.options import BuildOptions, docker_config_auths
from buildkitpy.errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from buildkitpy.frontend.dockerfile.instructions import Stage

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], Awaitable[None]]

PENDING_REPOSITORY = "buildkitpy-internal/classic-step"
INTERNAL_BASE_REPOSITORY = "buildkitpy-internal/classic-base"
_EXIT_CODE = re.compile(r'process "(.*)" did not complete successfully: exit code: (\d+)', re.S)


class BuildFailed(Exception):
    """A build error as the classic builder reports it (``errorDetail.code`` for RUN exit codes)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass
class Step:
    number: int
    text: str  # the instruction as written (the "Step i/n : ..." line)
    end_line: int  # the Dockerfile is cut after this line to build the step
    kind: str  # from, run, copy, add, workdir, arg-meta, other
    stage_index: int
    instruction: Any = None
    extra: str = ""  # a line added after the cut (the --label step)
    last_in_stage: bool = False
    start_line: int = 0
    stage: Stage | None = None  # None for global ARGs


@dataclass
class Plan:
    steps: list[Step]
    stages: list[Stage]
    meta_args: list[Any]


def plan(dockerfile: bytes, opts: BuildOptions) -> Plan:
    """The steps of the build, numbered as the classic builder numbers them."""
    from buildkitpy.frontend.dockerfile.errors import DockerfileError
    from buildkitpy.frontend.dockerfile.instructions import (
        AddCommand,
        ArgCommand,
        CopyCommand,
        RunCommand,
        WorkdirCommand,
        find_stage,
        parse_dockerfile,
    )

    try:
        parsed = parse_dockerfile(dockerfile)
    except DockerfileError as exc:
        raise BuildFailed(str(exc)) from None
    stages = parsed.stages
    if opts.target:
        index = find_stage(stages, opts.target)
        if index is None:
            raise BuildFailed(f"target stage {opts.target!r} could not be found")
        stages = stages[:index + 1]
    steps: list[Step] = []
    for meta in parsed.meta_args:
        steps.append(Step(0, meta.code, meta.end_line, "arg-meta", -1, meta, start_line=meta.start_line))
    for si, stage in enumerate(stages):
        steps.append(Step(0, stage.source_code, stage.end_line, "from", si, start_line=stage.start_line,
                          stage=stage))
        for ins in stage.commands:
            kind = ("run" if isinstance(ins, RunCommand) else "copy" if isinstance(ins, CopyCommand)
                    else "add" if isinstance(ins, AddCommand) else "workdir"
                    if isinstance(ins, WorkdirCommand) else "arg" if isinstance(ins, ArgCommand) else "other")
            steps.append(Step(0, ins.code, ins.end_line, kind, si, ins, start_line=ins.start_line,
                              stage=stage))
    if opts.labels:
        pairs = " ".join(f"{json.dumps(k)}={json.dumps(v)}" for k, v in sorted(opts.labels.items()))
        steps.append(Step(0, f"LABEL {pairs}", steps[-1].end_line, "other", len(stages) - 1,
                          extra=f"LABEL {pairs}", stage=stages[-1]))
    for i, step in enumerate(steps):
        step.number = i + 1
        following = steps[i + 1] if i + 1 < len(steps) else None
        step.last_in_stage = step.kind != "arg-meta" and (following is None
                                                          or following.stage_index != step.stage_index)
    return Plan(steps, stages, list(parsed.meta_args))


def _sources_digest(context: Path, instruction: Any) -> str:
    """What the classic builder's COPY/ADD cache looks at: the content of the sources it copies."""
    h = hashlib.sha256()
    if getattr(instruction, "from_", ""):
        h.update(f"from:{instruction.from_}".encode())
        return h.hexdigest()
    for content in getattr(instruction, "source_contents", []) or []:
        h.update(json.dumps([content.path, content.data, content.expand]).encode())
    for src in getattr(instruction, "source_paths", []) or []:
        if "://" in src or src.startswith("git@"):
            h.update(f"remote:{src}".encode())
            continue
        if "$" in src:
            h.update(_tree_digest(context, context).encode())  # unexpanded: the whole context decides
            continue
        for path in _glob(context, src):
            h.update(_tree_digest(context, path).encode())
    return h.hexdigest()


def _glob(context: Path, pattern: str) -> list[Path]:
    parts = [p for p in pattern.strip("/").split("/") if p not in ("", ".")]
    current = [context]
    for part in parts:
        following: list[Path] = []
        for base in current:
            if not base.is_dir() or base.is_symlink():
                continue
            if any(c in part for c in "*?["):
                following.extend(base / n for n in sorted(os.listdir(base)) if fnmatch.fnmatchcase(n, part))
            elif part == "..":
                continue
            else:
                following.append(base / part)
        current = following
    return [p for p in current if os.path.lexists(p)]


def _tree_digest(context: Path, root: Path) -> str:
    h = hashlib.sha256()
    entries = [root]
    if root.is_dir() and not root.is_symlink():
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            entries.extend(Path(dirpath) / n for n in sorted(dirnames + filenames))
    for path in entries:
        st = os.lstat(path)
        h.update(f"{os.path.relpath(path, context)}\0{st.st_mode}\0{st.st_uid}\0{st.st_gid}\0".encode())
        if stat.S_ISLNK(st.st_mode):
            h.update(os.readlink(path).encode())
        elif stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


class ClassicBuild:
    """One ``docker build`` on the classic path."""

    def __init__(self, *, images: ImageStore, control: Any, opts: BuildOptions, context: Path,
                 workdir: Path, emit: Emit, cgroup_parent: str = "") -> None:
        self.images = images
        self.control = control  # buildkitpy.client.connection.Client of our own Control API
        self.opts = opts
        self.context = context
        self.workdir = workdir
        self.emit = emit
        self.cgroup_parent = cgroup_parent  # where the RUN containers go: the build's limits
        self.shared_key = secrets.token_hex(16)
        self.plan = Plan([], [], [])
        self.sources: list[ImageRecord] = []  # the cachefrom images still in the running
        # Images this build took from cachefrom images (or built on top of them): the solver cannot
        # derive them from the Dockerfile, so later steps are built FROM them (``rebased``) and the
        # classic cache does not remember them.
        self.foreign: set[str] = set()
        self.rebased = False
        self.stage_images: dict[int, ImageRecord] = {}
        self.internal_refs: dict[str, str] = {}  # image id -> the name FROM uses for it

    async def out(self, text: str) -> None:
        if not self.opts.quiet:
            await self.emit({"stream": text})

    async def run(self) -> str:
        try:
            return await self._run()
        finally:  # not awaited: this runs in a cancelled build too (a small database write)
            for name in self.internal_refs.values():
                self.images.chains.forget_image_ref(name)

    async def _run(self) -> str:
        dockerfile_path = self._dockerfile_path()
        try:
            dockerfile = dockerfile_path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BuildFailed(f"Cannot locate specified Dockerfile: {self.opts.dockerfile}") from None
        self.plan = await anyio.to_thread.run_sync(plan, dockerfile, self.opts)
        steps = self.plan.steps
        lines = dockerfile.decode("utf-8", "surrogateescape").splitlines(keepends=True)
        await anyio.to_thread.run_sync(self._resolve_cache_sources)
        total = len(steps)
        image: ImageRecord | None = None
        stage_bases: dict[int, ImageRecord] = {}  # each stage's FROM image (the squash base)
        build_args = json.dumps(sorted((k, v) for k, v in self.opts.build_args.items()))
        for step in steps:
            await self.out(f"Step {step.number}/{total} : {step.text}\n")
            if step.kind == "arg-meta":
                continue
            parent = "" if step.kind == "from" else (image.id if image else "")
            key_parts = [parent, step.text, build_args, self.opts.platform, self.opts.network_mode,
                         ",".join(self.opts.extra_hosts), str(self.opts.shm_size)]
            if step.kind == "from":
                key_parts.append(str(step.stage_index))
                key_parts.append("\n".join(lines[:step.end_line]))  # earlier stages and global ARGs
            if step.kind in ("copy", "add"):
                key_parts.append(await anyio.to_thread.run_sync(_sources_digest, self.context,
                                                                 step.instruction))
            key = hashlib.sha256(json.dumps(key_parts).encode()).hexdigest()
            cached = built = None
            if not self.opts.no_cache and not (step.kind == "from" and self.opts.pull):
                cached = await anyio.to_thread.run_sync(self.images.cached_child, key)
                if cached is not None and step.kind != "from" and self.opts.cache_from and \
                        not await anyio.to_thread.run_sync(self._ancestor_of_source, cached.id):
                    cached = None
            if cached is None and step.kind != "from" and image is not None and self.sources \
                    and not self.opts.no_cache:
                cached, built = await self._from_cache_sources(step, lines, image)
            if cached is not None and step.kind != "from":
                await self.out(" ---> Using cache\n")
                image = cached
            else:
                container = secrets.token_hex(32) if step.kind in ("run", "workdir") else ""
                if container:
                    await self.out(f" ---> Running in {container[:12]}\n")
                image = cached or built or await self._build_step(step, lines, parent)
                if container and self.opts.remove:
                    await self.out(f" ---> Removed intermediate container {container[:12]}\n")
            if image.id in self.foreign:
                self.rebased = True
            else:
                await anyio.to_thread.run_sync(self.images.remember_child, key, image.id)
            await self.out(f" ---> {image.short_id}\n")
            if step.kind == "from":
                stage_bases[step.stage_index] = image
            self.stage_images[step.stage_index] = image
            if step.last_in_stage:
                await self.emit({"aux": {"ID": image.id}})
        if image is None:
            raise BuildFailed("No image was generated. Is your Dockerfile empty?")
        if self.opts.squash:
            base = stage_bases.get(steps[-1].stage_index)
            image = await anyio.to_thread.run_sync(self._squash, image, base)
            await self.emit({"aux": {"ID": image.id}})
        if self.opts.quiet:
            await self.emit({"stream": image.id + "\n"})
        else:
            await self.out(f"Successfully built {image.short_id}\n")
        for tag in self.opts.tags:
            full = await anyio.to_thread.run_sync(self.images.tag, image.id, tag)
            await self.out(f"Successfully tagged {familiar(full)}\n")
        return image.id

    # -- cachefrom ---------------------------------------------------------------------------------

    def _resolve_cache_sources(self) -> None:
        self.sources = []
        for name in self.opts.cache_from:
            try:
                self.sources.append(self.images.lookup(name))
            except (NotFound, InvalidArgument):
                log.warning("cache-from image %s is not in the image store: not used", name)

    def _ancestor_of_source(self, image_id: str) -> bool:
        """With cachefrom the Engine takes a local cache hit only when it is one of the sources or
        an ancestor of one."""
        for source in self.sources:
            current: str = source.id
            seen: set[str] = set()
            while current and current not in seen:
                if current == image_id:
                    return True
                seen.add(current)
                try:
                    current = self.images.get(current).parent
                except NotFound:
                    break
        return False

    def _stage_args(self, step: Step) -> list[Any]:
        """The ARG declarations of the step's stage before it, in order."""
        from buildkitpy.frontend.dockerfile.instructions import ArgCommand

        out: list[Any] = []
        for ins in step.stage.commands if step.stage is not None else []:
            if ins is step.instruction:
                break
            if isinstance(ins, ArgCommand):
                out.append(ins)
        return out

    def _global_args(self) -> dict[str, str | None]:
        values: dict[str, str | None] = {}
        for meta in self.plan.meta_args:
            for arg in meta.args:
                given = self.opts.build_args.get(arg.key)
                values[arg.key] = given if given is not None else arg.value
        return values

    async def _from_cache_sources(self, step: Step, lines: list[str], parent_record: ImageRecord
                                  ) -> tuple[ImageRecord | None, ImageRecord | None]:
        """(the image a cachefrom candidate gives this step, the image built to compare with them)."""
        from buildkitpy.dockerapi import cachefrom

        if step.stage is not None and step.stage.base_name and \
                any(s.name and s.name.lower() == step.stage.base_name.lower() for s in self.plan.stages):
            return None, None  # a stage on another stage inherits its ARGs: not told apart here
        parent = await anyio.to_thread.run_sync(cachefrom.view, self.images, parent_record)
        candidates = []
        for record in self.sources:
            target = await anyio.to_thread.run_sync(cachefrom.view, self.images, record)
            index = cachefrom.continues(parent, target)
            if index is not None:
                candidates.append((target, index))
        if not candidates:
            return None, None
        depth = len(parent.history)
        if step.kind == "run":
            args = [a for ins in self._stage_args(step) for a in ins.args]
            text = cachefrom.run_history_text(step.instruction, parent.config, args, self.opts.build_args,
                                              self._global_args())
            for target, index in candidates:
                entry = target.history[depth]
                if text is not None and entry.get("created_by") == text and not entry.get("empty_layer") \
                        and index < len(target.diff_ids):
                    self.sources = [target.record]
                    restored = await anyio.to_thread.run_sync(cachefrom.restore_run, self.images, parent,
                                                              target, index)
                    self.foreign.add(restored.id)
                    return restored, None
            return None, None
        built = await self._build_step(step, lines, parent_record.id)
        mine = await anyio.to_thread.run_sync(cachefrom.view, self.images, built)
        if len(mine.history) != depth + 1:
            return None, built
        for target, index in candidates:
            entry = target.history[depth]
            if cachefrom.entry_key(entry) != cachefrom.entry_key(mine.history[-1]):
                continue
            if not entry.get("empty_layer") and step.kind not in ("copy", "add"):
                # The layer is the instruction's alone (WORKDIR's directory): the text decides.
                if len(mine.diff_ids) != len(parent.diff_ids) + 1 or index >= len(target.diff_ids):
                    continue
                self.sources = [target.record]
                adopted = await anyio.to_thread.run_sync(cachefrom.adopt_layer, self.images, parent, mine,
                                                         target, index)
                self.foreign.add(adopted.id)
                return adopted, built
            layers = parent.diff_ids if entry.get("empty_layer") else \
                [*parent.diff_ids, *target.diff_ids[index:index + 1]]
            if mine.diff_ids != layers:
                continue
            self.sources = [target.record]
            if len(target.history) == depth + 1 and cachefrom.same_config(mine.config, target.config):
                self.foreign.add(target.record.id)
                return target.record, built
            return built, built
        return None, built

    def _internal_ref(self, record: ImageRecord) -> str:
        """A name a ``FROM`` in this build resolves to ``record`` (from the image store, no registry)."""
        name = self.internal_refs.get(record.id)
        if name is None:
            name = f"docker.io/{INTERNAL_BASE_REPOSITORY}-{self.shared_key[:16]}:{record.id.split(':')[-1]}"
            self.images.chains.put_image_ref(name, "", record.manifest_digest, record.manifest_digest)
            self.internal_refs[record.id] = name
        return name

    def _rebased_dockerfile(self, step: Step, lines: list[str], parent: str) -> str:
        """The step built on the images this build made so far: earlier stages and the parent as
        ``FROM <image>``, the stage's ARGs declared again, then the step."""
        stages = self.plan.stages
        first = stages[0].start_line if stages else 1
        out = list(lines[:max(first - 1, 0)])  # parser directives, global ARGs
        def from_line(record: ImageRecord, name: str) -> str:
            return f"FROM {self._internal_ref(record)}" + (f" AS {name}" if name else "") + "\n"

        for j in range(step.stage_index):
            out.append(from_line(self.stage_images[j], stages[j].name))
        if step.kind == "from":
            out.extend(lines[step.start_line - 1:step.end_line])
            return "".join(out)
        name = step.stage.name if step.stage is not None else ""
        out.append(from_line(self.images.get(parent), name))
        for ins in self._stage_args(step):
            out.extend(lines[ins.start_line - 1:ins.end_line])
        if step.extra:
            out.append(step.extra + "\n")
        else:
            out.extend(lines[step.start_line - 1:step.end_line])
        return "".join(out)

    def _squash(self, image: ImageRecord, base: ImageRecord | None) -> ImageRecord:
        from buildkitpy.dockerapi.squash import squash

        base_config: dict[str, Any] = {}
        base_layers: list[dict[str, Any]] = []
        if base is not None:
            base_config = self.images.config(base)
            base_layers = list(self.images.manifest(base).get("layers") or [])
            if not base_layers and not base_config.get("history"):
                base = None  # FROM scratch
        try:
            return squash(self.images, image, base, base_config, base_layers, self.workdir / "squash")
        except (InvalidArgument, OSError, ValueError) as exc:
            raise BuildFailed(f"failed to squash the image: {exc}") from None

    def _dockerfile_path(self) -> Path:
        rel = os.path.normpath(self.opts.dockerfile.lstrip("/"))
        if rel.startswith(".."):
            raise BuildFailed(f"the Dockerfile ({self.opts.dockerfile}) must be within the build context")
        return self.context / rel

    async def _build_step(self, step: Step, lines: list[str], parent: str) -> ImageRecord:
        from buildkitpy.client.options import ExportEntry
        from buildkitpy.client.rpc_errors import BuildkitError
        from buildkitpy.client.solve import SolveOpt, solve
        from buildkitpy.session.auth import AuthAttachable

        step_dir = self.workdir / f"step-{step.number}"
        step_dir.mkdir(parents=True, exist_ok=True)
        if self.rebased:
            text = self._rebased_dockerfile(step, lines, parent)
        else:
            text = "".join(lines[:step.end_line])
            if step.extra:
                text = text.rstrip("\n") + "\n" + step.extra + "\n"
        (step_dir / "Dockerfile").write_text(text, encoding="utf-8", errors="surrogateescape")
        ignore = self._dockerfile_path().with_name(self._dockerfile_path().name + ".dockerignore")
        if ignore.is_file():
            shutil.copyfile(ignore, step_dir / "Dockerfile.dockerignore")
        attrs = {"filename": "Dockerfile",
                 "image-resolve-mode": "pull" if self.opts.pull else "local"}
        for name, value in self.opts.build_args.items():
            if value is not None:
                attrs[f"build-arg:{name}"] = value
        if self.opts.no_cache:
            attrs["no-cache"] = ""
        if self.opts.platform:
            attrs["platform"] = self.opts.platform
        if self.opts.network_mode in ("host", "none"):
            attrs["force-network-mode"] = self.opts.network_mode
        if self.opts.extra_hosts:
            attrs["add-hosts"] = ",".join(self.opts.extra_hosts)
        if self.opts.shm_size:
            attrs["shm-size"] = str(self.opts.shm_size)
        if self.cgroup_parent:
            attrs["cgroup-parent"] = self.cgroup_parent
        if self.opts.ulimits:
            attrs["ulimit"] = ",".join(f"{u.get('Name')}={u.get('Soft')}:{u.get('Hard')}"
                                       for u in self.opts.ulimits)
        auths = docker_config_auths(self.opts.registry_auth)
        # A name holds the exported blobs until the image store records the image: the daemon
        # collects unnamed content after every build.
        pending = f"{PENDING_REPOSITORY}:{secrets.token_hex(16)}"
        opt = SolveOpt(local_dirs={"context": self.context, "dockerfile": step_dir},
                       frontend="dockerfile.v0", frontend_attrs=attrs,
                       exports=[ExportEntry(type="image", attrs={"store": "true", "name": pending})],
                       shared_key=self.shared_key, registry_auth=False,
                       attachables=[AuthAttachable(config={"auths": auths})],
                       entitlements=["network.host"] if self.opts.network_mode == "host" else [])
        logs: list[str] = []

        def on_status(msg: Any) -> None:
            if step.kind != "run":
                return
            for entry in msg.logs:
                logs.append(entry.msg.decode("utf-8", "replace"))

        gone: list[ClientGone] = []

        async def flush_logs(scope: anyio.CancelScope) -> None:
            try:
                while True:
                    await anyio.sleep(0.05)
                    while logs:
                        await self.out(logs.pop(0))
            except ClientGone as exc:  # the client hung up: stop the build
                gone.append(exc)
                scope.cancel()

        error: BuildkitError | None = None
        result = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(flush_logs, tg.cancel_scope)
            try:
                result = await solve(self.control, opt, on_status=on_status)
            except BuildkitError as exc:
                error = exc
            finally:
                tg.cancel_scope.cancel()
        if gone:
            raise gone[0]
        while logs:
            await self.out(logs.pop(0))
        if error is not None:
            raise _classic_error(error.message)
        assert result is not None
        response = result.exporter_response
        manifest = response.get("containerimage.digest", "")
        config = response.get("containerimage.config.digest", "")
        if not manifest or not config:
            raise BuildFailed("the build produced no image")
        try:
            record = await anyio.to_thread.run_sync(self.images.add, config, manifest, parent)
            if self.rebased:
                record = await anyio.to_thread.run_sync(self._normalize_rebased, step, record, parent)
                self.foreign.add(record.id)
            return record
        except (NotFound, InvalidArgument) as exc:
            raise BuildFailed(f"failed to store the image: {exc}") from None
        finally:  # not awaited, so a cancelled step forgets it too (a small database write)
            self.images.chains.forget_image_ref(f"docker.io/{pending}")


    def _normalize_rebased(self, step: Step, built: ImageRecord, parent: str) -> ImageRecord:
        """A step built on top of its parent image has the ARGs it re-declared in its history (and
        the parent's ONBUILD triggers consumed): keep only the parent's history plus the step's."""
        from buildkitpy.dockerapi import cachefrom

        if step.kind == "from" or not parent:
            return built
        parent_view = cachefrom.view(self.images, self.images.get(parent))
        mine = cachefrom.view(self.images, built)
        if not mine.history or len(mine.diff_ids) < len(parent_view.diff_ids):
            return built
        onbuild = list((parent_view.config.get("config") or {}).get("OnBuild") or [])
        if onbuild:
            config = mine.config.setdefault("config", {})
            config["OnBuild"] = onbuild + list(config.get("OnBuild") or [])
        record = cachefrom.replace_history_tail(self.images, parent_view, mine, mine.history[-1])
        if record.id != built.id and not built.tags:
            self.images.delete(built.id)
        return record


def _classic_error(message: str) -> BuildFailed:
    found = _EXIT_CODE.search(message)
    if found:
        code = int(found.group(2))
        return BuildFailed(f"The command '{found.group(1)}' returned a non-zero code: {code}", code)
    return BuildFailed(message)


def tag_names(tags: list[str]) -> list[str]:
    """The tags checked before the build starts (``invalid reference format`` fails early)."""
    return [normalize_tag(t) for t in tags]
