"""YAML reading that remembers where every value came from.

Pydantic reports errors by key path; operators fix files by line. This module keeps a
path → line map while loading, substitutes `${VAR}` / `${VAR:-default}` from the
environment, and rejects duplicate keys (PyYAML silently keeps the last one).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import ConfigProblem

Path_ = tuple[str | int, ...]
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class LoadedYaml:
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)
    problems: list[ConfigProblem] = field(default_factory=list)

    def line_of(self, path: Path_) -> int | None:
        # An error about a missing key points at its parent mapping.
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())


def dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_yaml(text: str, env: Mapping[str, str] | None = None) -> LoadedYaml:
    env = os.environ if env is None else env
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        return LoadedYaml(None, problems=[ConfigProblem("", f"not valid YAML: {problem}", line)])
    result = LoadedYaml(None)
    if root is None:
        result.data = {}
        return result
    result.data = _convert(root, (), result, env)
    return result


def _convert(node: yaml.Node, path: Path_, out: LoadedYaml, env: Mapping[str, str]) -> Any:
    out.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.SafeLoader(" ").construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            if not isinstance(key, str | int):
                out.problems.append(
                    ConfigProblem(
                        dotted(path), "keys must be strings", key_node.start_mark.line + 1
                    )
                )
                continue
            if key in mapping:
                out.problems.append(
                    ConfigProblem(
                        dotted((*path, key)), "duplicate key", key_node.start_mark.line + 1
                    )
                )
            mapping[key] = _convert(value_node, (*path, key), out, env)
            # Operators look for the key, not for where its value happens to start.
            out.lines[(*path, key)] = key_node.start_mark.line + 1
        return mapping
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, (*path, i), out, env) for i, item in enumerate(node.value)]
    value = yaml.SafeLoader(" ").construct_object(node)  # type: ignore[no-untyped-call]
    if isinstance(value, str) and "${" in value:
        value = _substitute(value, path, node.start_mark.line + 1, out, env)
    return value


def _substitute(value: str, path: Path_, line: int, out: LoadedYaml, env: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        out.problems.append(
            ConfigProblem(dotted(path), f"environment variable {name} is not set", line)
        )
        return ""

    return _ENV.sub(replace, value)
