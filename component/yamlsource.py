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
_MERGE_TAG = "tag:yaml.org,2002:merge"

# A configuration is a few hundred values a few levels deep. Aliases can make a short
# file expand to billions of values ("billion laughs") or contain itself: stop early.
# Without aliases a value takes at least a character, so only aliases can reach
# MAX_ALIAS_VALUES more values than twice the length of the text.
MAX_DEPTH = 32
MAX_ALIAS_VALUES = 100_000


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
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        return LoadedYaml(None, problems=[ConfigProblem("", "not valid YAML: nested too deeply")])
    result = LoadedYaml(None)
    if root is None:
        result.data = {}
        return result
    try:
        budget = _Budget(values_left=MAX_ALIAS_VALUES + 2 * len(text))
        result.data = _convert(root, (), result, env, budget)
    except _TooLarge as exc:
        return LoadedYaml(None, problems=[exc.problem])
    if result.data is None:  # `~` or `null` alone: as empty as an empty file
        result.data = {}
    return result


@dataclass
class _Budget:
    values_left: int


class _TooLarge(Exception):
    def __init__(self, problem: ConfigProblem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def _construct(node: yaml.Node) -> Any:
    return yaml.SafeLoader(" ").construct_object(node)  # type: ignore[no-untyped-call]


def _unreadable(node: yaml.Node) -> str:
    shown = node.value if len(node.value) <= 40 else node.value[:40] + "..."
    return f"cannot read {shown!r} as {node.tag.removeprefix('tag:yaml.org,2002:')}"


def _convert(
    node: yaml.Node, path: Path_, out: LoadedYaml, env: Mapping[str, str], budget: _Budget
) -> Any:
    line = node.start_mark.line + 1
    budget.values_left -= 1
    if budget.values_left < 0:
        message = "aliases expand to too many values"
        raise _TooLarge(ConfigProblem(dotted(path), message, line))
    if len(path) > MAX_DEPTH:
        message = f"nested more than {MAX_DEPTH} levels deep (a recursive alias?)"
        raise _TooLarge(ConfigProblem(dotted(path[:MAX_DEPTH]), message, line))
    out.lines[path] = line
    if isinstance(node, yaml.MappingNode):
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                message = "merge keys (<<) are not supported; write the keys out"
                out.problems.append(ConfigProblem(dotted(path), message, key_line))
                continue
            try:
                key = _construct(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            except Exception:  # PyYAML's constructors raise anything: KeyError, ValueError...
                out.problems.append(ConfigProblem(dotted(path), _unreadable(key_node), key_line))
                continue
            if not isinstance(key, str | int):
                out.problems.append(ConfigProblem(dotted(path), "keys must be strings", key_line))
                continue
            if key in mapping:
                out.problems.append(ConfigProblem(dotted((*path, key)), "duplicate key", key_line))
            mapping[key] = _convert(value_node, (*path, key), out, env, budget)
            # Operators look for the key, not for where its value happens to start.
            out.lines[(*path, key)] = key_line
        return mapping
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, (*path, i), out, env, budget) for i, item in enumerate(node.value)]
    try:
        value = _construct(node)
    except Exception:  # e.g. `2024-02-30`, `!!int x`, `!!bool maybe`
        out.problems.append(ConfigProblem(dotted(path), _unreadable(node), line))
        return node.value  # the text as written; the problem above fails the load
    if isinstance(value, str) and "${" in value:
        value = _substitute(value, path, line, out, env)
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
