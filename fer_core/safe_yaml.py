"""YAML for files a user may not have written: safe tags only, no duplicate keys, bounded size.

Errors are ``yaml.MarkedYAMLError`` (with the line) or ``YamlTooBig``; callers turn them into
one-line messages that never echo an expanded value.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from fer_core.constraints import short

MAX_CHARS = 1_000_000  # a recipe is a few KB
MAX_VALUES = 100_000  # values after alias expansion: an alias bomb multiplies them per level


class YamlTooBig(ValueError):
    """The document expands to more values than MAX_VALUES, or nests too deeply."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float (YAML 1.2) and rejects duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"duplicate key {short(key, 40)}; each key may appear once", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _bounded(data: Any) -> None:
    """Count values as they would be expanded (aliases repeat their target), stopping at MAX_VALUES."""
    stack, count = [data], 0
    while stack:
        value = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise YamlTooBig(f"expands to more than {MAX_VALUES:,} values (nested YAML aliases?)")
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, (list, tuple, set)):
            stack.extend(value)


def load(text: str) -> Any:
    """Parse one YAML document safely; raises yaml.YAMLError or YamlTooBig."""
    if len(text) > MAX_CHARS:
        raise YamlTooBig(f"is {len(text):,} characters; recipes are limited to {MAX_CHARS:,}")
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise YamlTooBig("nests too deeply") from None
    _bounded(data)
    return data


def problem(exc: yaml.YAMLError) -> tuple[int | None, str]:
    """The line (1-based) and a short description of a YAML error."""
    if isinstance(exc, yaml.MarkedYAMLError):
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        return line, (exc.problem or exc.context or "malformed YAML")[:160]
    return None, str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
