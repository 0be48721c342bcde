"""``cachefrom`` for classic builds: images whose history continues the current step's parent join
the cache candidates, as in the classic builder's image cache.

A candidate fits when the parent's history and layers are a prefix of its own; its next history
entry is then compared with the step: for RUN with the history text our Dockerfile frontend writes
(``RUN [|n ARG=value...] <shell> <command> # buildkit``), so a hit costs no container; for the
other instructions (no container either) the step is built and its history entry, layer and config
compared. A RUN hit becomes a new image: the parent plus the candidate's layer and history entry,
and when it is the candidate's last step the candidate itself. History timestamps are left out of
the comparison: our images of the same steps differ only there.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from buildkitpy.dockerapi.imagestore import ImageRecord, ImageStore

# BuildKit's SBOM scan args never become environment variables.
NON_ENV_ARGS = frozenset({"BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"})


@dataclass
class ImageView:
    record: ImageRecord
    config: dict[str, Any]

    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self.config.get("history") or [])

    @property
    def diff_ids(self) -> list[str]:
        return list((self.config.get("rootfs") or {}).get("diff_ids") or [])


def view(store: ImageStore, record: ImageRecord) -> ImageView:
    return ImageView(record, store.config(record))


def entry_key(h: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in h.items() if k != "created" and not (k == "empty_layer" and not v)}


def continues(parent: ImageView, target: ImageView) -> int | None:
    """The index in ``target``'s layers of its next history entry's layer, when ``parent`` is a
    prefix of ``target`` (history without timestamps, then layers); else None."""
    ph, th = parent.history, target.history
    if len(ph) >= len(th) or parent.diff_ids != target.diff_ids[:len(parent.diff_ids)]:
        return None
    if any(entry_key(a) != entry_key(b) for a, b in zip(ph, th, strict=False)):
        return None
    layers_before = sum(1 for h in th[:len(ph)] if not h.get("empty_layer"))
    if layers_before != len(parent.diff_ids):
        return None
    return layers_before


def run_history_text(instruction: Any, parent_config: dict[str, Any], stage_args: list[Any],
                     build_args: dict[str, str | None], global_args: dict[str, str | None]) -> str | None:
    """What our Dockerfile frontend writes as the history of this RUN, or None when it cannot be
    told without building (heredocs, variable defaults)."""
    if getattr(instruction, "files", None):
        return None
    args = list(instruction.cmd_line or [])
    if instruction.prepend_shell:
        shell = list((parent_config.get("config") or {}).get("Shell") or []) or ["/bin/sh", "-c"]
        args = [*shell, " ".join(args)]
    env = {}
    for item in (parent_config.get("config") or {}).get("Env") or []:
        key, _, env_value = item.partition("=")
        env[key] = env_value
    entries: dict[str, str] = {}
    for arg in stage_args:
        value: str | None
        if arg.key in build_args and build_args[arg.key] is not None:
            value = build_args[arg.key]
        elif arg.value is not None:
            if "$" in arg.value:
                return None
            value = arg.value
        elif arg.key in global_args:
            value = global_args[arg.key]
            if value is not None and "$" in value:
                return None
        else:
            value = None
        shown = env.get(arg.key) if arg.key not in NON_ENV_ARGS else None
        entries[arg.key] = f"{arg.key}={shown if shown is not None else (value or '')}"
    prefix = [f"|{len(entries)}", *entries.values()] if entries else []
    return "RUN " + " ".join(prefix + args) + " # buildkit"


def same_config(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal but for history, layers and creation time."""
    skip = ("history", "rootfs", "created")
    return {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}


def restore_run(store: ImageStore, parent: ImageView, target: ImageView, layer_index: int) -> ImageRecord:
    """The image of a RUN step taken from ``target``: the parent plus its next entry and layer."""
    if len(target.history) == len(parent.history) + 1 and same_config(parent.config, target.config):
        return target.record
    entry = target.history[len(parent.history)]
    config = copy.deepcopy(parent.config)
    config["history"] = [*parent.history, entry]
    config["rootfs"] = {"type": "layers", "diff_ids": [*parent.diff_ids, target.diff_ids[layer_index]]}
    if entry.get("created"):
        config["created"] = entry["created"]
    return _record(store, parent, config, [store.manifest(target.record)["layers"][layer_index]])


def adopt_layer(store: ImageStore, parent: ImageView, built: ImageView, target: ImageView,
                index: int) -> ImageRecord:
    """``built`` (a step whose layer depends on when it ran, as WORKDIR's new directory) with the
    target's layer for that step in place of its own."""
    if len(target.history) == len(built.history) and same_config(built.config, target.config):
        return target.record
    config = copy.deepcopy(built.config)
    config["history"] = [*parent.history, target.history[len(parent.history)]]
    config["rootfs"] = {"type": "layers", "diff_ids": [*parent.diff_ids, target.diff_ids[index]]}
    return _record(store, parent, config, [store.manifest(target.record)["layers"][index]])


def replace_history_tail(store: ImageStore, parent: ImageView, built: ImageView,
                         entry: dict[str, Any]) -> ImageRecord:
    """``built`` with its history cut to the parent's plus ``entry`` (what a step built on top of a
    cache image re-declared to get its ARGs is left out)."""
    config = copy.deepcopy(built.config)
    config["history"] = [*parent.history, entry]
    new_layers = store.manifest(built.record)["layers"][len(parent.diff_ids):]
    return _record(store, parent, config, new_layers)


def _record(store: ImageStore, parent: ImageView, config: dict[str, Any],
            new_layers: list[dict[str, Any]]) -> ImageRecord:
    config_bytes = json.dumps(config, separators=(",", ":")).encode()
    manifest = copy.deepcopy(store.manifest(parent.record))
    manifest["layers"] = [*(manifest.get("layers") or []), *new_layers]
    with store.holding() as holding:
        for layer in manifest["layers"]:
            store.hold(holding, layer["digest"])
        config_digest = store.write_held(holding, config_bytes)
        manifest["config"] = {**manifest["config"], "digest": config_digest, "size": len(config_bytes)}
        manifest_digest = store.write_held(holding, json.dumps(manifest, separators=(",", ":")).encode())
        return store.add(config_digest, manifest_digest, parent.record.id)
