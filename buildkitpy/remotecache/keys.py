"""A build's cache keys as BuildKit's ``CacheKey`` graph: what cache records are made of.

A ``KeyNode`` is one output of one vertex: its op's cache-map digest, the output index, and per
input the keys it may link to (the input's own key with the op's selector for that input, and, when
the op hashes that input's content, a content key). A content key is a node of its own, digest =
the content checksum, output -1 and no inputs, as BuildKit's slow keys are. The record digest of a
node is BuildKit's ``rootKey``: ``sha256("<digest>@<output>")``.

Keys of per-session sources (local directories) are ``random:``: never exported, and a record that
can only reach its input through one is not exported either (its content key may still carry it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

RANDOM_PREFIX = "random:"


def root_key(digest: str, output: int) -> str:
    """BuildKit's record digest for output ``output`` of a key with ``digest``."""
    if digest.startswith(RANDOM_PREFIX):
        return digest
    return "sha256:" + hashlib.sha256(f"{digest}@{output}".encode()).hexdigest()


@dataclass(frozen=True, eq=False)
class Link:
    node: KeyNode
    selector: str = ""


@dataclass(eq=False)
class KeyNode:
    digest: str
    output: int
    deps: list[list[Link]] = field(default_factory=list)
    storage_id: str = ""  # the key's id in the solver's own CacheStorage (its results live there)

    @property
    def record_digest(self) -> str:
        return root_key(self.digest, self.output)

    @property
    def random(self) -> bool:
        return self.digest.startswith(RANDOM_PREFIX)


def content_node(checksum: str) -> KeyNode:
    return KeyNode(checksum, -1)


def vertex_nodes(digest: str, ephemeral: bool, num_outputs: int, inputs: list[KeyNode],
                 selectors: list[str], content: list[str | None] | None) -> list[KeyNode]:
    """The key of each output of a vertex whose op has cache-map ``digest`` (``ephemeral``: a
    per-session key), given its inputs' keys, the op's selector per input and the content checksum
    per input when it was computed."""
    if ephemeral:
        digest = RANDOM_PREFIX + digest.partition(":")[2]
    deps: list[list[Link]] = []
    for i, inp in enumerate(inputs):
        links = [Link(inp, selectors[i])]
        checksum = content[i] if content is not None else None
        if checksum:
            links.append(Link(content_node(checksum)))
        deps.append(links)
    return [KeyNode(digest, out, deps) for out in range(num_outputs)]


def exportable(node: KeyNode, memo: dict[int, bool] | None = None) -> bool:
    """Whether a record can be written for ``node``: not random, and every input reachable through
    at least one exportable link."""
    memo = {} if memo is None else memo
    cached = memo.get(id(node))
    if cached is not None:
        return cached
    ok = not node.random and all(any(exportable(link.node, memo) for link in links) for links in node.deps)
    memo[id(node)] = ok
    return ok


def from_cache_keys(keys: list[object], memo: dict[str, KeyNode] | None = None) -> list[KeyNode]:
    """Nodes for the solver core's ``CacheKey`` objects (``digest``, ``output``, ``deps`` as
    ``((input key, selector), ...)``, ``ephemeral``, ``id``), iteratively (key chains can be long)."""
    memo = {} if memo is None else memo
    stack = list(keys)
    while stack:
        k = stack[-1]
        kid = k.id  # type: ignore[attr-defined]
        if kid in memo:
            stack.pop()
            continue
        missing = [d for d, _ in k.deps if d.id not in memo]  # type: ignore[attr-defined]
        if missing:
            stack.extend(missing)
            continue
        stack.pop()
        digest = k.digest  # type: ignore[attr-defined]
        if k.ephemeral:  # type: ignore[attr-defined]
            digest = RANDOM_PREFIX + digest.partition(":")[2]
        memo[kid] = KeyNode(digest, k.output, [[Link(memo[d.id], sel)] for d, sel in k.deps],  # type: ignore[attr-defined]
                            storage_id=kid)
    return [memo[k.id] for k in keys]  # type: ignore[attr-defined]
