"""Stage states and instruction dispatch of the Dockerfile converter (see ``convert.py``)."""

from __future__ import annotations

import copy
import posixpath
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from buildkitpy import llb
from buildkitpy.attest import sbom
from buildkitpy.llb import Platform

from . import image_config as ic
from . import lint as checks
from .convert_format import go_duration, go_list, go_quoted_list, step_width, summarize_heredoc
from .convert_git import GitRef, GitRefError, parse_git_ref
from .convert_named import NamedContext
from .convert_named import load as named_load
from .convert_named import lookup as named_lookup
from .errors import DockerfileError, printable
from .expand import expand
from .instructions import (
    AddCommand,
    ArgCommand,
    CmdCommand,
    CopyCommand,
    EntrypointCommand,
    EnvCommand,
    ExposeCommand,
    HealthCheckCommand,
    Instruction,
    KeyValuePairOptional,
    LabelCommand,
    MaintainerCommand,
    OnbuildCommand,
    RunCommand,
    ShellCommand,
    Stage,
    StopSignalCommand,
    UserCommand,
    VolumeCommand,
    WorkdirCommand,
    parse_dockerfile,
    parse_instruction,
)
from .mounts import parse_mount
from .outline import ArgInfo, StageOutline
from .parser import parse as parse_ast
from .parser import parse_heredoc
from .shell import ExpansionBudget, Lex, ShellExpansionError

if TYPE_CHECKING:
    from .convert import ImageResolver
    from .convert_opts import ConvertOptions

SCRATCH = "scratch"
NON_ENV_ARGS = frozenset({sbom.SCAN_CONTEXT_ARG, sbom.SCAN_STAGE_ARG})
_COPY_LOCAL = dict(
    follow_symlinks=True,
    copy_dir_contents=True,
    create_dest_path=True,
    allow_wildcard=True,
    allow_empty_wildcard=True,
)


class DispatchError(DockerfileError):
    """An instruction the converter refuses, with the Dockerfile lines at fault once they are known."""

    def __init__(self, message: str, lines: tuple[int, int] | None = None) -> None:
        super().__init__(message)
        self.dockerfile_lines = lines


# instructions whose text goes into LLB (paths, command lines, user names)
_LLB_INSTRUCTIONS = (RunCommand, CopyCommand, AddCommand, WorkdirCommand, UserCommand)
# what the converter reports as a problem in the Dockerfile (anything else is a bug of ours)
USER_ERRORS = (DockerfileError, llb.LLBError)


@dataclass(eq=False)
class Command:
    ins: Instruction
    sources: list[StageState | None] = field(default_factory=list)
    is_onbuild: bool = False


@dataclass(eq=False)
class StageState:
    """BuildKit's ``dispatchState``: one stage (or an implicit ``--from=image`` stage)."""

    stage: Stage
    base_name: str
    stage_name: str = ""
    state: llb.State = field(default_factory=llb.scratch)
    image: ic.Image = field(default_factory=dict)
    base_img: ic.Image | None = None
    platform: Platform | None = None
    base: StageState | None = None
    dispatched: bool = False
    resolved: bool = False
    onbuild_init: bool = False
    unregistered: bool = False
    deps: list[StageState] = field(default_factory=list)
    build_args: list[KeyValuePairOptional] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    ctx_paths: set[str] = field(default_factory=set)
    paths: set[str] = field(default_factory=set)
    named_context: Any = None
    ignore_cache: bool = False
    cmd_index: int = 0
    cmd_total: int = 0
    cmd_is_onbuild: bool = False
    workdir_set: bool = False
    cmd_set: bool = False
    outline: StageOutline = field(default_factory=StageOutline)  # for frontend.outline

    @property
    def lines(self) -> tuple[int, int]:
        return (self.stage.start_line, self.stage.end_line)

    def init(self) -> None:
        """Inherit from the base stage (``FROM <earlier stage>``)."""
        if self.base is None:
            return
        b = self.base
        self.state, self.platform = b.state, b.platform
        self.image = copy.deepcopy(b.image)
        self.image["config"].pop("OnBuild", None)
        self.base_img = copy.deepcopy(b.base_img)
        self.paths = b.paths
        self.workdir_set = b.workdir_set
        self.build_args = self.build_args + b.build_args

    def env(self) -> dict[str, str]:
        return dict(self.state.env())


def _edges(d: StageState) -> list[StageState]:
    """The stages ``d`` depends on: its base first, then the ones it copies or mounts from."""
    return ([d.base] if d.base is not None else []) + d.deps


def _ins_lines(ins: Instruction) -> tuple[int, int]:
    return (ins.start_line, ins.end_line)


def _with_lines(err: Exception, lines: tuple[int, int]) -> DispatchError:
    if isinstance(err, DispatchError) and err.dockerfile_lines:
        return err
    return DispatchError(str(err), lines)


class DispatchContext:
    def __init__(
        self,
        *,
        options: ConvertOptions,
        target_platform: Platform,
        implicit_target: bool,
        build_platforms: list[Platform],
        multi_platform: bool,
        source_map: llb.SourceMap,
        resolve_image: ImageResolver | None,
        session_id: str,
        named_contexts: dict[str, NamedContext],
        llb_caps: set[str] | frozenset[str] | None,
        build_context: llb.State,
        linter: checks.Linter | None = None,
        all_stages: bool = False,
        context_ignore: list[str] | None = None,
    ) -> None:
        self.opt = options
        self.target_platform = target_platform.normalized()
        self.implicit_target = implicit_target
        self.build_platforms = build_platforms
        self.multi_platform = multi_platform
        self.source_map = source_map
        self.resolve_image = resolve_image
        self.session_id = session_id
        self.named_contexts = named_contexts
        self.caps = llb_caps
        self.build_context = build_context
        self.states: list[StageState] = []
        self.by_name: dict[str, StageState] = {}
        self.context_paths: set[str] = set()
        self.global_args: dict[str, str] = {}
        self.expansions = ExpansionBudget()  # what every expansion of this conversion adds
        self.lex = Lex(budget=self.expansions)
        # build checks (None: not linting); ``all_stages`` dispatches unreachable stages too, as
        # BuildKit does for ``frontend.lint`` without a target
        self.linter = linter
        self.all_stages = all_stages
        self.context_ignore = context_ignore or []
        self._meta_arg_keys: list[str] = []
        self._used_once: dict[tuple[int, str], tuple[int, int]] = {}
        self.meta_outline = StageOutline()

    def supports(self, cap: str) -> bool:
        return self.caps is not None and cap in self.caps

    # ---- driver -----------------------------------------------------------------------------------
    async def run(self, dockerfile: bytes) -> StageState:
        df = parse_dockerfile(dockerfile)
        self.lex = Lex(df.ast.escape_token, budget=self.expansions)
        target_name = self.opt.target or df.stages[-1].name
        self.global_args = self._default_args(target_name)
        if self.linter is not None:
            self._lint_default_base_names(df.stages, df.meta_args)
        self._build_meta_args(df.meta_args)
        self._meta_arg_keys = [kp.key for cmd in df.meta_args for kp in cmd.args]
        self._build_states(df.stages)
        target = self._resolve_target()
        self._build_dependency_graph()
        reachable = await self._resolve_stages(target)
        for d in self.states:
            if (d not in reachable and not self.all_stages) or d.dispatched:
                continue
            self._dispatch_stage(d)
        if self.linter is not None and (message := self.linter.error()) is not None:
            raise DispatchError(message)
        return target

    def sbom_targets(self, target: StageState) -> tuple[dict[str, llb.State], bool]:
        """What an SBOM scan of ``target`` also mounts (BuildKit's ``SBOMTargets.Extras``): the
        build context when ``BUILDKIT_SBOM_SCAN_CONTEXT`` enables it for the target, and each
        stage the target builds on that ``BUILDKIT_SBOM_SCAN_STAGE`` enables (true, or a list of
        stage names; a stage's own ``ARG`` overrides the global one). Also whether the scan must
        ignore the cache (a scanned stage does)."""

        def enabled(d: StageState, name: str) -> bool:
            on = False
            if name in self.global_args:
                on = sbom.enabled_for_stage(d.stage_name, self.global_args[name])
            for kv in d.build_args:
                if kv.key == name and kv.value is not None:
                    on = sbom.enabled_for_stage(d.stage_name, kv.value)
            return on

        extras: dict[str, llb.State] = {}
        ignore_cache = target.ignore_cache
        if enabled(target, sbom.SCAN_CONTEXT_ARG):
            extras["context"] = self.build_context
        for d in self._reachable(target):
            if d is not target and enabled(d, sbom.SCAN_STAGE_ARG):
                extras[d.stage_name] = d.state
                ignore_cache = ignore_cache or d.ignore_cache
        return extras, ignore_cache

    # ---- build checks made while converting ----------------------------------------------------------
    def _lint_default_base_names(self, stages: list[Stage], arg_cmds: list[ArgCommand]) -> None:
        """``InvalidDefaultArgInFrom``: every base name must be valid with the ARG defaults alone."""
        assert self.linter is not None
        env = dict(self.global_args)
        try:
            for cmd in arg_cmds:
                for kp in cmd.args:
                    if kp.value is not None:
                        env.pop(kp.key, None)
                        env[kp.key] = self.lex.process_word(kp.value, env)
            for st in stages:
                name = self.lex.process_word(st.base_name, env)
                try:
                    llb.normalize_image_ref(name)
                except (llb.LLBError, ValueError):
                    self.linter.run(checks.INVALID_DEFAULT_ARG_IN_FROM,
                                    f"Default value for ARG {st.base_name} results in empty or invalid "
                                    "base image name", (st.start_line, st.end_line))
        except USER_ERRORS:
            return  # the conversion reports it

    def _lint_from(self, st: Stage, lint: checks.Linter, word: str, is_platform: bool) -> None:
        try:
            res = self.lex.process(word, self.global_args)
        except USER_ERRORS:
            return
        lines = (st.start_line, st.end_line)
        known = list(dict.fromkeys([*self._meta_arg_keys, *self.global_args]))
        checks.check_undefined_from_args(lint, res.unmatched, known, lines)
        if not is_platform:
            return
        if len(res.matched) == 1 and not res.unmatched and "TARGETPLATFORM" in res.matched:
            if res.result == self.global_args.get("TARGETPLATFORM"):
                lint.run(checks.REDUNDANT_TARGET_PLATFORM, f"Setting platform to predefined {word} in FROM "
                         "is redundant as this is the default behavior", lines)
        if not res.matched and not res.unmatched:
            try:
                p = Platform.parse(res.result)
            except (ValueError, llb.LLBError):
                return
            if p.os in st.name or p.architecture in st.name:
                return
            lint.run(checks.FROM_PLATFORM_FLAG_CONST_DISALLOWED,
                     f'FROM --platform flag should not use constant value "{res.result}"', lines)

    def _lint_used_once(self, d: StageState, ins: Instruction, lint: checks.Linter) -> None:
        key = (id(d), ins.keyword)
        previous = self._used_once.get(key)
        if previous is not None:  # the earlier one is what gets ignored
            lint.run(checks.MULTIPLE_INSTRUCTIONS_DISALLOWED, f"Multiple {ins.name} instructions should not "
                     "be used in the same stage because only the last one will be used", previous)
        self._used_once[key] = _ins_lines(ins)

    def _lint_instruction(self, d: StageState, ins: Instruction, lint: checks.Linter,
                          from_context: bool) -> None:
        """The checks of one expanded instruction, before it is applied to the stage."""
        lines = _ins_lines(ins)
        cfg = d.image.get("config", {})
        if isinstance(ins, EnvCommand | LabelCommand):
            for kv in ins.env if isinstance(ins, EnvCommand) else ins.labels:
                if kv.no_delim:
                    lint.run(checks.LEGACY_KEY_VALUE_FORMAT, f'"{ins.name} key=value" should be used instead '
                             f'of legacy "{ins.name} key value" format', lines)
                if isinstance(ins, EnvCommand):
                    checks.check_secret_key(lint, "ENV", kv.key, lines)
        elif isinstance(ins, CmdCommand | EntrypointCommand):
            self._lint_used_once(d, ins, lint)
            if ins.prepend_shell and not cfg.get("Shell"):
                lint.run(checks.JSON_ARGS_RECOMMENDED, f"JSON arguments recommended for {ins.name} to "
                         "prevent "
                         "unintended behavior related to OS signals", lines)
        elif isinstance(ins, HealthCheckCommand):
            self._lint_used_once(d, ins, lint)
        elif isinstance(ins, WorkdirCommand):
            if not d.workdir_set and not posixpath.isabs(ins.path):
                lint.run(checks.WORKDIR_RELATIVE_PATH, f"Relative workdir {_go_quote(ins.path)} can have "
                         "unexpected results if the base image changes", lines)
        elif isinstance(ins, ExposeCommand):
            for port in ins.ports:
                checks.check_expose(lint, port, lines)
        elif isinstance(ins, AddCommand | CopyCommand) and from_context:
            self._lint_ignored_sources(ins, lint)

    def _lint_ignored_sources(self, ins: AddCommand | CopyCommand, lint: checks.Linter) -> None:
        from buildkitpy.fsutil.patterns import PatternError, PatternMatcher

        if not self.context_ignore:
            return
        try:
            matcher = PatternMatcher(self.context_ignore)
        except PatternError:
            return
        if not matcher or matcher.exclusions:
            return  # BuildKit gives up on exceptions: a negated file below an excluded directory is fine
        cmd = "Add" if isinstance(ins, AddCommand) else "Copy"
        for src in ins.source_paths:
            if _is_git(src) or _is_http(src):
                continue
            src = posixpath.normpath(src) if src else "."
            if src.startswith("//"):
                src = "/" + src.lstrip("/")
            if src in (".", "/") and not any(
                not p.exclusion and p.text in ("*", "**", "**/*") for p in matcher.patterns
            ):
                continue
            try:
                ignored = matcher.matches_or_parent_matches(src)
            except PatternError:
                continue
            if ignored:
                lint.run(checks.COPY_IGNORED_FILE,
                         f"Attempting to {cmd} file {_go_quote(src)} that is excluded by .dockerignore",
                         _ins_lines(ins))

    def _default_args(self, target: str) -> dict[str, str]:
        bp, tp = self.build_platforms[0], self.target_platform
        values = [
            ("BUILDPLATFORM", str(bp)),
            ("BUILDOS", bp.os),
            ("BUILDOSVERSION", bp.os_version),
            ("BUILDARCH", bp.architecture),
            ("BUILDVARIANT", bp.variant),
            ("TARGETPLATFORM", _format_all(tp)),
            ("TARGETOS", tp.os),
            ("TARGETOSVERSION", tp.os_version),
            ("TARGETARCH", tp.architecture),
            ("TARGETVARIANT", tp.variant),
            ("TARGETSTAGE", target or "default"),
        ]
        return {k: self.opt.build_args.get(k, v) for k, v in values}

    def _build_meta_args(self, arg_cmds: list[ArgCommand]) -> None:
        all_args = self.meta_outline.all_args
        for cmd in arg_cmds:
            for kp in cmd.args:
                info = ArgInfo(kp.key, None, kp.doc_comment, _ins_lines(cmd))
                if kp.key in self.opt.build_args:
                    value: str | None = self.opt.build_args[kp.key]
                elif kp.value is not None:
                    try:
                        res = self.lex.process(kp.value, self.global_args)
                    except USER_ERRORS as e:
                        raise _with_lines(e, _ins_lines(cmd)) from None
                    value = res.result
                    info.deps = set(res.matched)
                    if kp.key in info.deps:  # ARG A=$A:more keeps what the earlier A used
                        info.deps.discard(kp.key)
                        if kp.key in all_args:
                            info.deps |= all_args[kp.key].deps
                else:
                    value = None
                info.value = value
                all_args[kp.key] = info
                if value is not None:
                    self.global_args.pop(kp.key, None)
                    self.global_args[kp.key] = value

    def _add_state(self, d: StageState) -> None:
        self.states.append(d)
        base = self.by_name.get(d.base_name)
        if base is not None:
            d.base = base
        if d.stage.name:
            self.by_name[d.stage.name.lower()] = d

    def _build_states(self, stages: list[Stage]) -> None:
        for i, st in enumerate(stages):
            if self.linter is not None:
                stage_lint = self.linter.for_comments(st.comments)
                self._lint_from(st, stage_lint, st.base_name, False)
                if st.platform:
                    self._lint_from(st, stage_lint, st.platform, True)
            try:
                base_res = self.lex.process(st.base_name, self.global_args)
                base_name = base_res.result
            except USER_ERRORS as e:
                raise _with_lines(e, (st.start_line, st.end_line)) from None
            used = set(base_res.matched)
            if not base_name:
                raise DispatchError(
                    f"base name ({st.base_name}) should not be blank", (st.start_line, st.end_line)
                )
            d = StageState(stage=st, base_name=base_name, stage_name=st.name,
                           outline=self.meta_outline.clone())
            if st.platform:
                try:
                    plat_res = self.lex.process(st.platform, self.global_args)
                    value = plat_res.result
                    used |= plat_res.matched
                    if not value:
                        raise DispatchError(f"empty platform value from expression {st.platform}")
                    d.platform = Platform.parse(value)
                except USER_ERRORS as e:
                    raise DispatchError(
                        f"failed to parse platform {st.platform}: {e}", (st.start_line, st.end_line)
                    ) from None
            found = None
            if st.name:
                try:
                    found = named_lookup(self.named_contexts, st.name, d.platform or self.target_platform)
                except USER_ERRORS as e:
                    raise _with_lines(e, d.lines) from None
            if found is not None:
                d.named_context = found
                self._add_state(d)
                d.base = None
                continue
            if not st.name:
                d.stage_name = f"stage-{i}"
            self._add_state(d)
            if d.base is not None:
                d.outline = d.base.outline.clone()
            d.outline.used |= used
            total = 1 if d.base_name != SCRATCH and d.base is None else 0
            total += sum(
                isinstance(c, AddCommand | CopyCommand | RunCommand | WorkdirCommand) for c in st.commands
            )
            d.cmd_total = total
            d.ignore_cache = self.opt.stage_no_cache(st.name)

    def _resolve_target(self) -> StageState:
        if not self.opt.target:
            return self.states[-1]
        d = self.by_name.get(self.opt.target.lower())
        if d is None:
            raise DispatchError(f'target stage "{self.opt.target}" could not be found', None)
        return d

    def _find_or_implicit(self, name: str, ins: Instruction) -> StageState:
        d = self.by_name.get(name.lower())
        if d is not None:
            return d
        stage = Stage(name="", base_name=name, start_line=ins.start_line, end_line=ins.end_line)
        return StageState(stage=stage, base_name=name, unregistered=True)

    def _to_command(self, ins: Instruction) -> Command:
        cmd = Command(ins)
        if isinstance(ins, CopyCommand) and ins.from_:
            if Lex(self.lex.escape_token).process_word(ins.from_, {}) != ins.from_:
                raise DispatchError(
                    "variable expansion is not supported for --from, define a new stage "
                    "with FROM using ARG from global scope as a workaround",
                    _ins_lines(ins),
                )
            if ins.from_.isdigit() or (ins.from_.startswith("-") and ins.from_[1:].isdigit()):
                index = int(ins.from_)
                if index < 0 or index >= len(self.states):
                    raise DispatchError(f"invalid stage index {index}", _ins_lines(ins))
                cmd.sources = [self.states[index]]
            else:
                cmd.sources = [self._find_or_implicit(ins.from_, ins)]
        elif isinstance(ins, RunCommand):
            for spec in ins.mount_specs:
                frm = parse_mount(spec, None).from_ or SCRATCH
                cmd.sources.append(self._find_or_implicit(frm, ins))
        return cmd

    def _register_sources(self, d: StageState, cmd: Command) -> None:
        for src in cmd.sources:
            if src is None:
                continue
            if src not in d.deps:
                d.deps.append(src)
            if src.unregistered and src not in self.states:
                self._add_state(src)

    def _build_dependency_graph(self) -> None:
        for d in list(self.states):
            d.commands = []
            for ins in d.stage.commands:
                try:
                    cmd = self._to_command(ins)
                except USER_ERRORS as e:
                    raise _with_lines(e, _ins_lines(ins)) from None
                d.commands.append(cmd)
                self._register_sources(d, cmd)
        self._check_cycles()
        if len(self.states) == 1:
            self.states[0].stage_name = ""

    def _check_cycles(self) -> None:
        """Iterative depth-first search over base and dependency edges (chains can be long)."""
        done: set[int] = set()
        for start in self.states:
            if id(start) in done:
                continue
            on_path = {id(start)}
            stack = [(start, iter(_edges(start)))]
            while stack:
                d, edges = stack[-1]
                for dep in edges:
                    if id(dep) in on_path:
                        message = f"circular dependency detected on stage: {dep.stage_name}"
                        raise DispatchError(message, dep.lines)
                    if id(dep) not in done:
                        on_path.add(id(dep))
                        stack.append((dep, iter(_edges(dep))))
                        break
                else:
                    stack.pop()
                    on_path.discard(id(d))
                    done.add(id(d))

    def _reachable(self, target: StageState) -> list[StageState]:
        """``target`` and every stage it builds on or copies from (pre-order, iterative)."""
        seen: list[StageState] = []
        seen_ids: set[int] = set()
        stack = [target]
        while stack:
            d = stack.pop()
            if id(d) in seen_ids:
                continue
            seen_ids.add(id(d))
            seen.append(d)
            stack.extend(reversed(_edges(d)))
        return seen

    def _in_file_order(self, subset: list[StageState]) -> list[StageState]:
        wanted = {id(d) for d in subset}
        return [d for d in self.states if id(d) in wanted]

    async def _resolve_stages(self, target: StageState) -> list[StageState]:
        while True:
            reachable = self._reachable(target)
            for d in self.states:
                is_reachable = self.all_stages or any(d is r for r in reachable)
                if d.base is None and not d.dispatched and not d.resolved:
                    d.resolved = is_reachable
                    if d.base_name == SCRATCH and d.named_context is None:
                        d.state = llb.scratch()
                        d.image = ic.empty_image(self.target_platform)
                        d.platform = self.target_platform
                        if d.unregistered:
                            d.dispatched = True
                        continue
                    try:
                        await self._resolve_base_image(d, is_reachable)
                    except USER_ERRORS as e:
                        raise _with_lines(e, d.lines) from None
            new_deps = False
            # file order, so every base stage is initialised before the stages built on it (a base is
            # always declared earlier); ``reachable`` lists the target first
            for d in self._in_file_order(reachable):
                d.init()
                onbuilds = list(d.image.get("config", {}).get("OnBuild") or [])
                if d.base is not None and not d.onbuild_init:
                    onbuilds += [
                        c.ins.expression for c in d.base.commands if isinstance(c.ins, OnbuildCommand)
                    ]
                    d.onbuild_init = True
                if onbuilds:
                    if self._init_onbuild_triggers(d, onbuilds):
                        new_deps = True
                    d.image["config"].pop("OnBuild", None)
            if not new_deps:
                return reachable

    def _init_onbuild_triggers(self, d: StageState, triggers: list[str]) -> bool:
        new_deps = False
        commands = []
        for trigger in triggers:
            try:
                ast = parse_ast(trigger)
                if len(ast.nodes) != 1:
                    raise DispatchError("onbuild trigger should be a single expression")
                node = ast.nodes[0]
                node.start_line, node.end_line = d.stage.start_line, d.stage.end_line
                ins = parse_instruction(node)
                cmd = self._to_command(ins)
            except USER_ERRORS as e:
                raise _with_lines(e, d.lines) from None
            cmd.is_onbuild = True
            if cmd.sources:
                new_deps = True
            commands.append(cmd)
            self._register_sources(d, cmd)
        d.commands = commands + d.commands
        d.cmd_total += len(commands)
        return new_deps

    async def _resolve_base_image(self, d: StageState, reachable: bool) -> None:
        orig_name = d.base_name
        try:
            ref = llb.normalize_image_ref(d.base_name)
        except llb.LLBError as e:
            reason = str(e).removeprefix(f"invalid image reference {d.base_name!r}: ")
            raise DispatchError(f'failed to parse stage name "{d.base_name}": {reason}') from None
        platform = d.platform or self.target_platform
        d.base_name = ref
        is_scratch = False
        if reachable:
            if d.named_context is not None:  # the whole stage is replaced by the named context
                await self._load_named_stage(d, platform)
                return
            found = named_lookup(self.named_contexts, ref, platform)
            if found is not None:  # FROM NAME / --from=NAME names a context
                await self._load_named_base(d, found, platform)
                return
            if self.resolve_image is None:
                raise DispatchError(f"FROM {d.stage.base_name} needs registry support (not available yet)")
            try:
                dgst, data = await self.resolve_image(ref, platform)
            except Exception as e:  # the resolver's own error, prefixed with the name as BuildKit does
                raise DispatchError(f"{d.stage.base_name}: {e}") from None
            img = ic.parse_image(data)
            d.base_img = copy.deepcopy(img)
            img.pop("created", None)
            if d.platform is None and self.implicit_target:
                platform = _auto_detect_platform(img, platform, self.build_platforms)
            if dgst:
                d.base_name = f"{ref}@{dgst}"
            is_scratch = ic.is_scratch(img)
            d.image = img
        if is_scratch:
            d.state = llb.scratch()
        else:
            cmd_name = self._prefix(d, "FROM " + d.base_name, platform, {})
            mode = self.opt.image_resolve_mode
            d.state = llb.image(
                d.base_name,
                platform=platform,
                resolve_mode=mode if mode != "default" else None,
                description={"com.docker.dockerfile.v1.command": d.stage.source_code},
                custom_name=cmd_name,
                locations=[self._location(d.lines)],
            )
            if reachable and self.linter is not None:
                self._lint_base_platform(orig_name, platform, d.image, d.lines)
        d.platform = platform
        if d.unregistered:
            d.dispatched = True

    def _lint_base_platform(self, name: str, expected: Platform, img: ic.Image,
                            lines: tuple[int, int]) -> None:
        """``InvalidBaseImagePlatform``: the image has no variant for the platform the stage needs."""
        assert self.linter is not None
        actual = Platform(img.get("os", ""), img.get("architecture", ""), img.get("variant", ""),
                          img.get("os.version", ""))
        try:
            actual = actual.normalized()
        except (ValueError, llb.LLBError):
            pass
        exp = expected.normalized()
        if exp.os != actual.os or exp.architecture != actual.architecture:
            self.linter.run(checks.INVALID_BASE_IMAGE_PLATFORM,
                            f"Base image {name} was pulled with platform {_go_quote(_format_all(actual))}, "
                            f"expected {_go_quote(_format_all(exp))} for current build", lines)

    async def _load_named_stage(self, d: StageState, platform: Platform) -> None:
        key, nc = d.named_context
        st, img = await self._named_state(d, key, nc, platform)
        d.state = st
        d.dispatched = True
        if img is not None:
            img.pop("created", None)
            d.image = img
            if img.get("architecture") and img.get("os"):
                d.platform = Platform(img["os"], img["architecture"], img.get("variant", ""),
                                      img.get("os.version", ""), tuple(img.get("os.features") or ()))
        else:
            d.image = ic.empty_image(platform)
        if d.platform is None:
            d.platform = platform

    async def _load_named_base(
        self, d: StageState, found: tuple[str, NamedContext], platform: Platform
    ) -> None:
        key, nc = found
        st, img = await self._named_state(d, key, nc, platform)
        if img is None:
            img = ic.empty_image(platform)
        d.base_img = copy.deepcopy(img)
        img.pop("created", None)
        d.image = img
        d.state = st.with_platform(platform)
        d.platform = platform
        if d.unregistered:
            d.dispatched = True

    async def _named_state(
        self, d: StageState, key: str, nc: NamedContext, platform: Platform
    ) -> tuple[llb.State, ic.Image | None]:
        if nc.kind != "local":
            return await named_load(nc, key, platform, self.resolve_image)
        paths_of = d

        def follow() -> list[str]:
            from .convert import _follow_paths

            return _follow_paths(paths_of.paths)

        value = nc.source.partition(":")[2]
        name = f"[context {key}] load from client"
        return _lazy_local(value, self.session_id, f"context:{key}-", nc.excludes, name, follow), None

    # ---- dispatch -------------------------------------------------------------------------------------
    def _dispatch_stage(self, d: StageState) -> None:
        d.init()
        d.dispatched = True
        if d.platform is None:
            d.platform = self.target_platform
        if not d.image:
            d.image = ic.empty_image(d.platform)
        cfg = d.image.setdefault("config", {})
        if (
            not any(e.partition("=")[0] == "PATH" for e in cfg.get("Env") or ())
            and d.platform.os != "windows"
        ):
            cfg["Env"] = [*(cfg.get("Env") or []), "PATH=" + ic.DEFAULT_PATH]
        for entry in cfg.get("Env") or ():
            k, _, v = entry.partition("=")
            d.state = d.state.add_env(k, v)
        if self.opt.hostname:
            d.state = d.state.hostname(self.opt.hostname)
        if cfg.get("WorkingDir"):
            self._workdir(d, cfg["WorkingDir"], None)
        if cfg.get("User"):
            d.state = d.state.user(cfg["User"])
        d.state = d.state.network(self.opt.network_mode)  # type: ignore[arg-type]
        for cmd in d.commands:
            try:
                self._dispatch(d, cmd)
            except USER_ERRORS as e:
                raise _with_lines(e, _ins_lines(cmd.ins)) from None
        self.context_paths |= d.ctx_paths

    def _dispatch(self, d: StageState, cmd: Command) -> None:
        d.cmd_is_onbuild = cmd.is_onbuild
        ins = cmd.ins
        if isinstance(ins, _LLB_INSTRUCTIONS) and "\0" in ins.code:
            # paths, arguments and user names go into LLB and on to the OS, which cannot take a NUL
            raise DispatchError(f"{ins.name.upper()} contains a NUL byte")
        lint = self.linter.for_comments(ins.comments) if self.linter is not None else None
        if not isinstance(ins, ArgCommand):
            if lint is None:
                ins = expand(ins, d.env(), escape_token=self.lex.escape_token, budget=self.expansions)
            else:
                env = d.env()
                unmatched: set[str] = set()
                ins = expand(ins, env, escape_token=self.lex.escape_token, unmatched=unmatched,
                             budget=self.expansions)
                checks.check_undefined_vars(lint, unmatched, [a.key for a in d.build_args], list(env),
                                            _ins_lines(ins), NON_ENV_ARGS)
                self._lint_instruction(d, ins, lint, not cmd.sources)
        img = d.image
        cfg = img["config"]
        if isinstance(ins, MaintainerCommand):
            img["author"] = ins.maintainer
            ic.commit_to_history(img, f"MAINTAINER {ins.maintainer}", with_layer=False)
        elif isinstance(ins, EnvCommand):
            msg = "ENV"
            for kv in ins.env:
                msg += f" {kv.key}={kv.value}"
                d.state = d.state.add_env(kv.key, kv.value)
                cfg["Env"] = ic.add_env(cfg.get("Env") or [], kv.key, kv.value)
            ic.commit_to_history(img, msg, with_layer=False)
        elif isinstance(ins, RunCommand):
            self._run(d, ins, cmd.sources)
        elif isinstance(ins, WorkdirCommand):
            self._workdir(d, ins.path, ins)
        elif isinstance(ins, AddCommand):
            self._copy(d, ins, self.build_context, is_add=True, ignore=True)
            for src in ins.source_paths:
                if not src.startswith(("http://", "https://")):
                    d.ctx_paths.add(posixpath.normpath(posixpath.join("/", src)))
        elif isinstance(ins, CopyCommand):
            source = self.build_context
            if cmd.sources:
                src_state = cmd.sources[0]
                assert src_state is not None
                if not src_state.dispatched:
                    raise DispatchError(
                        f'cannot copy from stage "{ins.from_}", it needs to be defined before '
                        f'current stage "{d.stage_name}"'
                    )
                source = src_state.state
            self._copy(d, ins, source, is_add=False, ignore=not cmd.sources)
            target_paths = d.ctx_paths if not cmd.sources else cmd.sources[0].paths  # type: ignore[union-attr]
            for src in ins.source_paths:
                target_paths.add(_clean_abs(src))
        elif isinstance(ins, LabelCommand):
            labels = cfg.setdefault("Labels", {})
            msg = "LABEL"
            for kv in ins.labels:
                labels[kv.key] = kv.value
                msg += f" {kv.key}={kv.value}"
            ic.commit_to_history(img, msg, with_layer=False)
        elif isinstance(ins, OnbuildCommand):
            cfg["OnBuild"] = [*(cfg.get("OnBuild") or []), ins.expression]
        elif isinstance(ins, CmdCommand):
            args = ins.cmd_line or []
            if ins.prepend_shell:
                args = _with_shell(img, args)
            cfg["Cmd"] = args
            cfg["ArgsEscaped"] = True
            d.cmd_set = True
            ic.commit_to_history(img, f"CMD {go_quoted_list(args)}", with_layer=False)
        elif isinstance(ins, EntrypointCommand):
            entrypoint = ins.cmd_line  # None: ENTRYPOINT [] clears it
            if ins.prepend_shell and entrypoint is not None:
                entrypoint = _with_shell(img, entrypoint)
            cfg["Entrypoint"] = entrypoint
            if not d.cmd_set:
                cfg.pop("Cmd", None)
            ic.commit_to_history(img, f"ENTRYPOINT {go_quoted_list(entrypoint)}", with_layer=False)
        elif isinstance(ins, HealthCheckCommand):
            h = ins.health
            cfg["Healthcheck"] = {
                "Test": h.test,
                "Interval": h.interval,
                "Timeout": h.timeout,
                "StartPeriod": h.start_period,
                "StartInterval": h.start_interval,
                "Retries": h.retries,
            }
            text = (
                f"{{Test:{go_list(h.test)} Interval:{go_duration(h.interval)} "
                f"Timeout:{go_duration(h.timeout)} StartPeriod:{go_duration(h.start_period)} "
                f"StartInterval:{go_duration(h.start_interval)} Retries:{h.retries}}}"
            )
            ic.commit_to_history(img, f"HEALTHCHECK {text}", with_layer=False)
        elif isinstance(ins, ExposeCommand):
            ports = [p for raw in ins.ports for p in _parse_port(raw)]
            exposed = cfg.setdefault("ExposedPorts", {})
            for p in ports:
                exposed[p] = {}
            ic.commit_to_history(img, f"EXPOSE {go_list(ports)}", with_layer=False)
        elif isinstance(ins, UserCommand):
            d.state = d.state.user(ins.user)
            cfg["User"] = ins.user
            ic.commit_to_history(img, f"USER {ins.user}", with_layer=False)
        elif isinstance(ins, VolumeCommand):
            volumes = cfg.setdefault("Volumes", {})
            for v in ins.volumes:
                if not v:
                    raise DispatchError("VOLUME specified can not be an empty string")
                volumes[v] = {}
            ic.commit_to_history(img, f"VOLUME {go_list(ins.volumes)}", with_layer=False)
        elif isinstance(ins, StopSignalCommand):
            _check_signal(ins.signal)
            cfg["StopSignal"] = ins.signal
            ic.commit_to_history(img, f"STOPSIGNAL {ins.signal}", with_layer=False)
        elif isinstance(ins, ShellCommand):
            cfg["Shell"] = ins.shell
            ic.commit_to_history(img, f"SHELL {go_list(ins.shell)}", with_layer=False)
        elif isinstance(ins, ArgCommand):
            self._arg(d, ins, lint)

    # ---- naming --------------------------------------------------------------------------------------
    def _prefix(self, d: StageState, text: str, platform: Platform | None, env: dict[str, str]) -> str:
        if d.cmd_total == 0:
            return text
        out = "["
        if self.multi_platform and platform is not None:
            out += _format_all(platform) + _format_target_platform(platform, env) + " "
        if d.stage_name:
            out += d.stage_name + " "
        d.cmd_index += 1
        out += f"{d.cmd_index:>{step_width(d.cmd_total)}}/{d.cmd_total}] "
        if d.cmd_is_onbuild:
            out += "ONBUILD "
        return out + text

    def _display(self, code: str, env: dict[str, str], lex: Lex | None = None) -> str:
        try:
            text = (lex or self.lex).process_word(code, env)
        except ShellExpansionError:
            text = code
        head, sep, rest = text.partition(" ")
        return head.upper() + sep + rest

    def _location(self, lines: tuple[int, int]) -> llb.SourceLocation:
        return self.source_map.location([(n, n) for n in range(lines[0], lines[1] + 1)])

    # ---- instructions with filesystem effects ---------------------------------------------------------
    def _workdir(self, d: StageState, path: str, ins: WorkdirCommand | None) -> None:
        assert d.platform is not None
        cfg = d.image["config"]
        wd = path if posixpath.isabs(path) else posixpath.join(cfg.get("WorkingDir") or "/", path)
        wd = _clean_abs(wd)
        cfg["WorkingDir"] = wd
        d.state = d.state.dir(wd)
        if ins is None:
            return
        d.workdir_set = True
        with_layer = False
        if wd != "/":
            env = d.env()
            name = self._prefix(d, self._display(ins.code, env), d.platform, env)
            user = cfg.get("User") or None
            d.state = d.state.file(
                llb.mkdir(wd, 0o755, make_parents=True, chown=user),
                custom_name=name,
                locations=[self._location(_ins_lines(ins))],
                platform=d.platform,
                **self._cache_opts(d),
            )
            with_layer = True
        ic.commit_to_history(d.image, "WORKDIR " + wd, with_layer=with_layer)

    def _cache_opts(self, d: StageState) -> dict[str, Any]:
        return {"ignore_cache": True} if d.ignore_cache else {}

    def _arg(self, d: StageState, ins: ArgCommand, lint: checks.Linter | None = None) -> None:
        parts = []
        for arg in ins.args:
            arg = copy.copy(arg)
            if lint is not None:
                checks.check_secret_key(lint, "ARG", arg.key, _ins_lines(ins))
            has_value = arg.key in self.opt.build_args
            has_default = arg.value is not None
            if not has_default and not has_value and arg.key in self.global_args:
                arg.value = self.global_args[arg.key]
            skip_info = not has_default and not has_value and arg.key in self.global_args
            if has_value:
                arg.value = self.opt.build_args[arg.key]
            elif has_default:
                env = d.env()
                res = self.lex.process(arg.value or "", env)
                if lint is not None:
                    checks.check_undefined_vars(lint, res.unmatched, [a.key for a in d.build_args], list(env),
                                                _ins_lines(ins), NON_ENV_ARGS)
                arg.value = res.result
            if arg.value is not None and arg.key not in NON_ENV_ARGS:
                d.state = d.state.add_env(arg.key, arg.value)
            if not skip_info:
                d.outline.all_args[arg.key] = ArgInfo(arg.key, arg.value, arg.doc_comment, _ins_lines(ins))
            d.outline.used.add(arg.key)
            d.build_args.append(arg)
            parts.append(arg.key if arg.value is None else f"{arg.key}={arg.value}")
        ic.commit_to_history(d.image, "ARG " + " ".join(parts), with_layer=False)

    def _run(self, d: StageState, ins: RunCommand, sources: list[StageState | None]) -> None:
        assert d.platform is not None
        custom = ins.code
        d.paths.add("/")
        args = list(ins.cmd_line or [])
        mounts: list[Any] = []
        if ins.files:
            if len(args) != 1 or not ins.prepend_shell:
                raise DispatchError(f"parsing produced an invalid run command: {go_list(args)}")
            doc = parse_heredoc(args[0])
            if doc is not None:
                from .parser import chomp_heredoc_content

                f = ins.files[0]
                data = chomp_heredoc_content(f.data) if f.chomp else f.data
                if d.image.get("os") != "windows" and data.startswith("#!"):
                    script = (
                        llb.scratch()
                        .dir("/")
                        .file(
                            llb.mkfile(f.name, 0o755, data.encode()),
                            custom_name="[internal] preparing inline document",
                            platform=d.platform,
                        )
                    )
                    mounts.append(llb.bind("/dev/pipes/", script, selector="/", readonly=True))
                    args = [posixpath.join("/dev/pipes/", f.name)]
                else:
                    args = [data]
                custom += f" ({summarize_heredoc(f.data)})"
            else:
                text = args[0]
                for f in ins.files:
                    text += "\n" + f.data + f.name
                args = [text]
        if ins.prepend_shell:
            args = _with_shell(d.image, args)

        opts: dict[str, Any] = {
            "description": {"com.docker.dockerfile.v1.command": ins.code},
            "locations": [self._location(_ins_lines(ins))],
            **self._cache_opts(d),
        }
        proxy = _proxy_env(self.opt.build_args)
        if proxy is not None:
            opts["proxy_env"] = proxy
        mounts += self._run_mounts(d, ins, sources)
        if ins.security == "insecure":
            opts["security"] = "insecure"
        if ins.network in ("none", "host"):
            opts["network"] = ins.network
        if self.supports("exec.meta.ulimit") and self.opt.ulimits:
            opts["ulimits"] = list(self.opt.ulimits)
        env = d.env()
        masked = dict(env)
        for m in ins.mounts or ():
            if m.type == "secret" and m.env is not None:
                masked.pop(m.env, None)
                masked[m.env] = "****"
        raw_lex = Lex(self.lex.escape_token, raw_quotes=True, skip_unset_env=True, budget=self.expansions)
        opts["custom_name"] = self._prefix(d, self._display(custom, masked, raw_lex), d.platform, env)
        if self.opt.extra_hosts:
            opts["extra_hosts"] = dict(self.opt.extra_hosts)
        if self.supports("exec.mount.tmpfs.size") and self.opt.shm_size > 0:
            mounts.append(llb.tmpfs("/dev/shm", size=self.opt.shm_size))
        if self.supports("exec.meta.cgroup.parent") and self.opt.cgroup_parent:
            opts["cgroup_parent"] = self.opt.cgroup_parent
        d.state = d.state.run(args, mounts=mounts, **opts).root()
        ic.commit_to_history(
            d.image, "RUN " + _run_command_string(args, d.build_args, env), with_layer=True, built=True
        )

    def _run_mounts(self, d: StageState, ins: RunCommand, sources: list[StageState | None]) -> list[Any]:
        out: list[Any] = []
        for i, m in enumerate(ins.mounts or ()):
            frm = m.from_
            if not frm and m.type == "cache":
                frm = SCRATCH
            st = self.build_context
            src_state = sources[i] if i < len(sources) else None
            if frm:
                if src_state is None or not src_state.dispatched:
                    raise DispatchError(
                        f'cannot mount from stage "{frm}" to "{m.target}", stage needs to be '
                        "defined before current command"
                    )
                st = src_state.state
            if m.type == "secret":
                secret = _secret_mount(m)
                d.outline.secrets.setdefault(secret.id, (m.required, _ins_lines(ins)))
                out.append(secret)
                continue
            if m.type == "ssh":
                if m.source:
                    raise DispatchError("ssh does not support source")
                # BuildKit sends the id as given: an empty one means "default" to the daemon
                d.outline.ssh.setdefault(m.cache_id or "default", (m.required, _ins_lines(ins)))
                out.append(
                    llb.ssh(
                        id=m.cache_id or "",
                        target=m.target,
                        mode=0o600 if m.mode is None else m.mode,
                        uid=m.uid or 0,
                        gid=m.gid or 0,
                        optional=not m.required,
                    )
                )
                continue
            target = m.target
            if not posixpath.isabs(posixpath.normpath(target or ".")):
                target = posixpath.join("/", d.state.get_dir(), target)
            target = posixpath.normpath(target) if target else target
            if target == "/":
                raise DispatchError(f'invalid mount target "{target}"')
            selector = ""
            src = _clean_abs(m.source)
            if src != "/":
                selector = src
            elif m.type == "cache" and (m.uid is not None or m.gid is not None or m.mode is not None):
                st = st.file(
                    llb.mkdir("/cache", 0o755 if m.mode is None else m.mode, chown=(m.uid or 0, m.gid or 0)),
                    custom_name="[internal] setting cache mount permissions",
                )
                selector = "/cache"
            if m.type == "tmpfs":
                out.append(llb.tmpfs(target, size=m.size_limit))
            elif m.type == "cache":
                sharing = m.cache_sharing or "shared"
                cache_id = m.cache_id or posixpath.normpath(m.target)
                out.append(
                    llb.Mount(
                        target,
                        st,
                        selector=selector,
                        readonly=m.read_only,
                        cache_id="/" + cache_id,
                        cache_sharing=sharing,
                    )
                )
            else:
                no_output = not m.read_only and self.supports("exec.mount.bind.readwrite-nooutput")
                out.append(
                    llb.bind(target, st, selector=selector, readonly=m.read_only, output=not no_output)
                )
            if not frm:
                d.ctx_paths.add(_clean_abs(m.source))
            elif src_state is not None:
                src_state.paths.add(_clean_abs(m.source))
        return out

    def _copy(
        self, d: StageState, ins: AddCommand | CopyCommand, source: llb.State, *, is_add: bool, ignore: bool
    ) -> None:
        assert d.platform is not None
        dest = _dest_path(d.state.get_dir() or "/", ins.dest_path)
        chown = ins.chown or None
        mode: int | str | None = None
        if ins.chmod:
            try:
                value = int(ins.chmod, 8)
            except ValueError:
                value = None
                if ins.chmod.isdigit():
                    raise DispatchError(
                        f"invalid chmod parameter: '{ins.chmod}'. it should be octal string and "
                        "between 0 and 07777"
                    ) from None
                mode = ins.chmod
            if value is not None:
                if value > 0o7777:
                    raise DispatchError(
                        f"invalid chmod parameter: '{ins.chmod}'. it should be octal string and "
                        "between 0 and 07777"
                    )
                mode = value
        checksum = getattr(ins, "checksum", "")
        if checksum:
            if len(ins.source_paths) != 1:
                raise DispatchError("checksum can't be specified for multiple sources")
            if not _is_http(ins.source_paths[0]) and not _is_git(ins.source_paths[0]):
                raise DispatchError("checksum requires HTTP(S) or Git sources")
        msg = "ADD" if is_add else "COPY"
        if isinstance(ins, CopyCommand) and ins.parents:
            msg += " --parents"
        if ins.chown:
            msg += " --chown=" + ins.chown
        if ins.chmod:
            msg += " --chmod=" + ins.chmod
        env = d.env()
        name = self._display(ins.code, env)
        pg_name = self._prefix(d, name, d.platform, env)
        extra: dict[str, Any] = {"chown": chown}
        if ins.exclude_patterns:
            extra["exclude_patterns"] = list(ins.exclude_patterns)
        action: llb.FileAction | None = None

        def add(src_state: llb.State, src: str, **kw: Any) -> None:
            nonlocal action
            kw = {**kw, **extra, "mode": mode}
            action = (
                llb.copy(src_state, src, dest, **kw)
                if action is None
                else action.copy(src_state, src, dest, **kw)
            )

        for src in ins.source_paths:
            if printable(src) != src:  # the context's follow paths go into LLB, which must be UTF-8
                raise DispatchError(f"source path {printable(src)!r} is not valid UTF-8")
            msg += " " + src
            git_ref = parse_git_ref(src)
            if git_ref is not None and not git_ref.indistinguishable_from_local:
                if not is_add:
                    raise DispatchError("source can't be a git ref for COPY")
                add(_git_source(git_ref, ins, pg_name), "/", create_dest_path=True)
                continue
            if _is_http(src):
                if not is_add:
                    raise DispatchError("source can't be a URL for COPY")
                from urllib.parse import urlsplit

                base = posixpath.basename(urlsplit(src).path)
                fname = base if base not in ("", ".", "/") else "__unnamed__"
                st = llb.http(
                    src,
                    filename=fname,
                    checksum=checksum or None,
                    custom_name=pg_name,
                    description={"com.docker.dockerfile.v1.command": ""},
                )
                unpack = bool(getattr(ins, "unpack", None))
                add(st, fname, create_dest_path=True, attempt_unpack=unpack)
                continue
            patterns: list[str] = []
            required: list[str] = []
            if isinstance(ins, CopyCommand) and ins.parents:
                parent, sep, pattern = src.partition("/./")
                if not sep:
                    pattern, parent = src, "/"
                src = parent
                pattern = _clean_abs(pattern)
                patterns = [pattern.lstrip("/")]
                if not _has_wildcards(src) and not _has_wildcards(pattern):
                    required = [_clean_abs(src + "/" + pattern)]  # filepath.Join: pattern is not a root
            src = _clean_abs(src)
            unpack = is_add if getattr(ins, "unpack", None) is None else bool(ins.unpack)  # type: ignore[union-attr]
            add(
                source,
                src,
                include_patterns=patterns,
                required_paths=required,
                attempt_unpack=unpack,
                **_COPY_LOCAL,
            )
        for content in ins.source_contents:
            msg += " <<" + content.path
            st = llb.scratch().file(
                llb.mkfile(content.path, 0o644, content.data.encode()),
                custom_name="[internal] preparing inline document",
                platform=d.platform,
            )
            add(st, content.path, create_dest_path=True)
        msg += " " + ins.dest_path
        assert action is not None
        file_opts: dict[str, Any] = {
            "custom_name": pg_name,
            "locations": [self._location(_ins_lines(ins))],
            **self._cache_opts(d),
        }
        if self.supports("mergeop") and ins.link and not ins.chmod:
            pg_id = secrets.token_hex(12)
            d.cmd_index -= 1
            pg_name = self._prefix(d, name, d.platform, env)
            layer = llb.scratch().file(
                action,
                platform=d.platform,
                **{
                    **file_opts,
                    "custom_name": pg_name,
                    "progress_group": llb.ProgressGroup(pg_id, pg_name, True),
                },
            )
            d.cmd_index -= 1
            merge_name = self._prefix(d, "LINK " + name, d.platform, env)
            d.state = d.state.with_output(
                llb.merge(
                    [d.state, layer],
                    **{
                        **file_opts,
                        "custom_name": merge_name,
                        "progress_group": llb.ProgressGroup(pg_id, pg_name, False),
                    },
                ).output
            )
        else:
            d.state = d.state.file(action, **file_opts)
        ic.commit_to_history(d.image, msg, with_layer=True, built=True)


# ---- helpers --------------------------------------------------------------------------------------------
def _clean_abs(p: str) -> str:
    out = posixpath.normpath(posixpath.join("/", p))
    return "/" + out.lstrip("/") if out.startswith("//") else out


def _dest_path(workdir: str, dest: str) -> str:
    """``pathRelativeToWorkingDir``: absolute destination, keeping a trailing ``/`` (or ``/.``)."""
    if not posixpath.isabs(dest):
        if dest in (".", ""):
            dest = "./"
        joined = _clean_abs(posixpath.join(workdir, dest))
    else:
        joined = _clean_abs(dest)
    if dest.endswith("/") and not joined.endswith("/"):
        joined += "/"
    elif dest.endswith("/."):
        joined = (joined if joined == "/" else joined + "/") + "."
    return joined


def _with_shell(img: ic.Image, args: list[str]) -> list[str]:
    shell = list(img.get("config", {}).get("Shell") or [])
    if not shell:
        shell = ["cmd", "/S", "/C"] if img.get("os") == "windows" else ["/bin/sh", "-c"]
    return [*shell, " ".join(args)]


def _run_command_string(args: list[str], build_args: list[KeyValuePairOptional], env: dict[str, str]) -> str:
    entries: dict[str, str] = {}
    for arg in build_args:
        value = env.get(arg.key)
        if value is None:
            value = arg.value or ""
        entries[arg.key] = f"{arg.key}={value}"
    parts = [f"|{len(entries)}", *entries.values()] if entries else []
    return " ".join(parts + list(args))


def _proxy_env(build_args: dict[str, str]) -> Any:
    from buildkitpy.api import ops_pb2

    fields = {
        "http_proxy": "http_proxy",
        "https_proxy": "https_proxy",
        "ftp_proxy": "ftp_proxy",
        "no_proxy": "no_proxy",
        "all_proxy": "all_proxy",
    }
    values: dict[str, str] = {}
    for key in sorted(build_args):
        if key.lower() in fields:
            values[fields[key.lower()]] = build_args[key]
    return ops_pb2.ProxyEnv(**values) if values else None


def _secret_mount(m: Any) -> llb.Secret:
    sid = m.source or m.cache_id
    if not sid:
        if not m.target:
            raise DispatchError("one of source, target required")
        sid = posixpath.basename(m.target)
    target = m.target or None
    if m.env is None:
        target = m.target or "/run/secrets/" + posixpath.basename(sid)
    mode = 0o400 if m.mode is None else m.mode
    return llb.secret(
        sid, target=target, env=m.env, mode=mode, uid=m.uid or 0, gid=m.gid or 0, optional=not m.required
    )


def _is_http(src: str) -> bool:
    return src.startswith(("http://", "https://")) and not _is_git(src)


def _is_git(src: str) -> bool:
    """BuildKit's ``isGitSource``: a malformed git reference counts as none here (the copy reports it)."""
    try:
        return parse_git_ref(src) is not None
    except GitRefError:
        return False


def _git_source(ref: GitRef, ins: AddCommand | CopyCommand, custom_name: str) -> llb.State:
    """``ADD <git ref>``: the flags and the reference's own query must agree where both are given."""
    keep = getattr(ins, "keep_git_dir", None)
    if keep is not None and ref.keep_git_dir is not None and keep != ref.keep_git_dir:
        raise DispatchError("inconsistent keep-git-dir configuration")
    if ref.keep_git_dir is not None:
        keep = ref.keep_git_dir
    checksum = getattr(ins, "checksum", "")
    if checksum and ref.checksum and checksum != ref.checksum:
        raise DispatchError(f'checksum mismatch "{checksum}" != "{ref.checksum}"')
    checksum = ref.checksum or checksum
    if ref.fetch_by_commit:
        raise DispatchError("fetch-by-commit git references are not supported yet")
    return llb.git(
        ref.remote,
        ref.ref,
        keep_git_dir=bool(keep),
        checksum=checksum or None,
        subdir=ref.subdir or None,
        skip_submodules=ref.submodules is False,
        custom_name=custom_name,
    )


def _has_wildcards(name: str) -> bool:
    i = 0
    while i < len(name):
        if name[i] in "*?[":
            return True
        if name[i] == "\\":
            i += 1
        i += 1
    return False


def _go_quote(s: str) -> str:
    from buildkitpy.gocompat import quote

    return quote(s)


def _format_all(p: Platform) -> str:
    out = str(p)
    return out + (f"({p.os_version})" if p.os_version else "")


def _format_target_platform(base: Platform, env: dict[str, str]) -> str:
    tp = env.get("TARGETPLATFORM")
    target: Platform | None = None
    if tp:
        try:
            target = Platform.parse(tp)
        except ValueError:
            target = None
    elif any(k in env for k in ("TARGETOS", "TARGETARCH", "TARGETVARIANT")):
        target = Platform(
            env.get("TARGETOS") or base.os,
            env.get("TARGETARCH") or base.architecture,
            env.get("TARGETVARIANT", ""),
        ).normalized()
    if target is None:
        return ""
    if target.os == base.os and target.architecture != base.architecture:
        return "->" + target.architecture + (f"/{target.variant}" if target.variant else "")
    if target.os != base.os:
        return "->" + _format_all(target)
    return ""


def _auto_detect_platform(img: ic.Image, target: Platform, supported: list[Platform]) -> Platform:
    os_, arch = img.get("os"), img.get("architecture")
    if target.os == os_ and target.architecture == arch:
        return target
    for p in supported:
        if p.os == os_ and p.architecture == arch:
            return p
    return target


_SIGNALS = {
    "ABRT",
    "ALRM",
    "BUS",
    "CHLD",
    "CLD",
    "CONT",
    "FPE",
    "HUP",
    "ILL",
    "INT",
    "IO",
    "IOT",
    "KILL",
    "PIPE",
    "POLL",
    "PROF",
    "PWR",
    "QUIT",
    "SEGV",
    "STKFLT",
    "STOP",
    "SYS",
    "TERM",
    "TRAP",
    "TSTP",
    "TTIN",
    "TTOU",
    "URG",
    "USR1",
    "USR2",
    "VTALRM",
    "WINCH",
    "XCPU",
    "XFSZ",
}


def _check_signal(sig: str) -> None:
    if sig.isdigit():
        if int(sig) == 0:
            raise DispatchError(f"invalid signal: {sig}")
        return
    name = sig.upper().removeprefix("SIG")
    if name in _SIGNALS or name.startswith("RTMIN") or name.startswith("RTMAX"):
        return
    raise DispatchError(f"invalid signal: {sig}")


def _parse_port(raw: str) -> list[str]:
    """``[ip:][hostPort:]port[-end][/proto]`` → ``port/proto`` entries."""
    port, _, proto = raw.partition("/")
    proto = proto or "tcp"
    container = port.rsplit(":", 1)[-1]
    start_s, _, end_s = container.partition("-")
    try:
        start = int(start_s)
        end = int(end_s) if end_s else start
    except ValueError:
        raise DispatchError(f"invalid containerPort: {container}") from None
    if start < 0 or end > 65535 or end < start:
        raise DispatchError(f"invalid containerPort: {container}")
    return [f"{p}/{proto.lower()}" for p in range(start, end + 1)]


def _lazy_local(
    name: str, session_id: str, shared_key: str, excludes: list[str], custom_name: str, follow: Any
) -> llb.State:
    """A local source whose follow paths are computed when first marshalled (the paths the build reads
    from a named context are only known after every stage was dispatched)."""
    from buildkitpy.llb.vertex import Output

    from .convert_lazy import LazyVertex

    def build() -> llb.State:
        return llb.local(
            name,
            session_id=session_id or None,
            shared_key_hint=shared_key,
            exclude_patterns=excludes or None,
            follow_paths=follow() or None,
            custom_name=custom_name,
        )

    return llb.State.from_output(Output(LazyVertex(build), 0))
