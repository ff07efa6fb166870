"""YAML with positions: every mapping and list remembers the line each of its items is on."""

from __future__ import annotations

from typing import Any

import yaml

from firmware_sim.errors import ConfigError

__all__ = ["PosDict", "PosList", "ScenarioError", "load_yaml"]


class ScenarioError(ConfigError):
    """A scenario file at fault: names the file, the line and the field."""

    def __init__(self, source: str, line: int | None, field: str, message: str) -> None:
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")
        self.source = source
        self.line = line
        self.field = field


class PosDict(dict[str, Any]):
    """A mapping that knows its own line and the line of each key."""

    line: int = 0
    key_lines: dict[str, int]


class PosList(list[Any]):
    """A list that knows its own line and the line of each item."""

    line: int = 0
    item_lines: list[int]


def _convert(node: yaml.Node, source: str, scalars: yaml.SafeLoader) -> Any:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = PosDict()
        out.line = line
        out.key_lines = {}
        for key_node, value_node in node.value:
            key = _convert(key_node, source, scalars)
            if not isinstance(key, str):
                raise ScenarioError(
                    source, key_node.start_mark.line + 1, "", f"key {key!r} is not a name"
                )
            if key in out:
                raise ScenarioError(source, key_node.start_mark.line + 1, key, "given twice")
            out[key] = _convert(value_node, source, scalars)
            out.key_lines[key] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        items = PosList(_convert(n, source, scalars) for n in node.value)
        items.line = line
        items.item_lines = [n.start_mark.line + 1 for n in node.value]
        return items
    # Scalars: the safe loader's own resolution (ints, floats, booleans, null, strings).
    try:
        return scalars.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, OverflowError) as exc:  # an unknown tag, a bad date
        problem = getattr(exc, "problem", None) or str(exc)
        raise ScenarioError(source, line, "", f"not a value: {problem}") from None


def load_yaml(text: str, source: str) -> Any:
    """Parse one YAML document keeping positions; errors name the file and line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ScenarioError(source, line, "", f"not valid YAML: {problem}") from None
    if node is None:
        raise ScenarioError(source, 1, "", "the file is empty")
    try:
        return _convert(node, source, yaml.SafeLoader(""))
    except RecursionError:
        raise ScenarioError(source, None, "", "nested too deep, or refers to itself") from None
