"""YAML parsed with safe tags only and a bound on its alias expansion, measured on the composed
node graph before any Python object is built: a few aliases of aliases ("billion laughs")
expand to billions of values in whatever later walks them (a merge, a deep copy, an error
message's repr, yaml.safe_dump of the spec), wherever in the file they sit."""

from __future__ import annotations

from typing import Any

import yaml

MAX_YAML_NODES = 100_000  # YAML nodes after alias expansion
MAX_YAML_CHARS = 4 << 20  # scalar characters after alias expansion
MAX_YAML_DEPTH = 64  # nested sequences and mappings (PyYAML composes recursively)


def load_bounded(text: str) -> Any:
    """yaml.safe_load, refusing (yaml.YAMLError) a document whose expansion is over the bounds.
    Nesting deeper than MAX_YAML_DEPTH is refused as it is read."""
    return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader)


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that bounds the nesting as it composes, and measures each document's alias
    expansion once it is composed."""

    depth = 0

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise yaml.YAMLError(f"nested more than {MAX_YAML_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def compose_document(self):
        node = super().compose_document()
        nodes, chars = _expanded_size(node)
        if nodes > MAX_YAML_NODES or chars > MAX_YAML_CHARS:
            raise yaml.YAMLError(
                f"its aliases expand to more than {MAX_YAML_NODES:,} values or "
                f"{MAX_YAML_CHARS // (1 << 20)} MiB of text"
            )
        return node


def _expanded_size(root: yaml.Node) -> tuple[int, int]:
    """(nodes, scalar characters) of a composed document with every alias expanded, counted
    without expanding: each distinct node once, bottom-up. A recursive alias is an error."""
    sizes: dict[int, tuple[int, int]] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        children = _children(node)
        if children_done:
            open_nodes.discard(key)
            n = 1 + sum(sizes[id(c)][0] for c in children)
            chars = len(node.value) if isinstance(node, yaml.ScalarNode) else 0
            sizes[key] = (n, chars + sum(sizes[id(c)][1] for c in children))
            if sizes[key][0] > MAX_YAML_NODES or sizes[key][1] > MAX_YAML_CHARS:
                return sizes[key]  # too large already: no need to count the rest
        elif key in open_nodes:
            raise yaml.YAMLError("an alias refers to a value that contains it (recursive)")
        elif key not in sizes:
            open_nodes.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []
