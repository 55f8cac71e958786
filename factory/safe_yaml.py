"""YAML for config files, bounded: size, nesting depth and alias expansion are capped, duplicate keys refused.

A config file is small and written by hand, so anything far outside that is a mistake or an attack:
a 39 MB file once took minutes and gigabytes before its unknown key was reported, a 200k-deep nesting
raised ``RecursionError``, and a repeated key silently kept only its last value. PyYAML's pure-Python
loader is extended here (its composer is recursive, so the depth check runs as nodes are built, long
before Python's recursion limit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

#: a pipeline file is a few kilobytes; a megabyte is far past any real one
MAX_BYTES = 1_000_000
#: nesting levels of mappings and sequences (a pipeline needs about 6)
MAX_DEPTH = 64
#: scalars and collections after expanding aliases (an "alias bomb" of a few lines expands to billions)
MAX_NODES = 1_000_000
MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlLimitError(ValueError):
    """A YAML document past a limit, or with a repeated key; the message says where."""


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses deep nesting, alias bombs and duplicate keys."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise YamlLimitError(f"nested deeper than {MAX_DEPTH} levels at line {mark.line + 1}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> Node | None:
        node = super().get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_NODES:
            raise YamlLimitError(f"expands to more than {MAX_NODES:,} values through aliases (&anchor / *alias)")
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:  # `<<: *base` may be overridden on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                seen = first_line.get(key)
            except TypeError:  # unhashable key: the base class reports it
                continue
            line = key_node.start_mark.line + 1
            if seen is not None:
                raise YamlLimitError(f"duplicate key {key!r} at line {line} (first at line {seen}): "
                                     "YAML keeps only the last value, so remove one")
            first_line[key] = line
        return super().construct_mapping(node, deep)


def _expanded_size(node: Node, memo: dict[int, int]) -> int:
    """Values in the document with every alias expanded (memoised: shared nodes are counted once each)."""
    if id(node) in memo:
        return memo[id(node)]
    if isinstance(node, SequenceNode):
        size = 1 + sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[id(node)] = min(size, MAX_NODES + 1)
    return memo[id(node)]


def read_text_capped(path: Path, max_bytes: int = MAX_BYTES) -> bytes:
    """The file's bytes, refusing (before reading it all) a file over ``max_bytes``."""
    with open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        size = path.stat().st_size
        raise YamlLimitError(f"{size / 1e6:.1f} MB is over the {max_bytes / 1e6:g} MB limit for a config file")
    return data


def load(text: str) -> Any:
    return yaml.load(text, Loader=BoundedLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: str | Path, error: type[Exception] = ValueError, what: str = "file") -> Any:
    """The YAML document in ``path``, or ``error`` with one line naming the file (and the line and
    column of a syntax error). Shared by pipeline, backend and training config files."""
    path = Path(path)
    try:
        return load(read_text_capped(path).decode("utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise error(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except YamlLimitError as exc:
        raise error(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise error(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
