"""The commented example file is the configuration reference: it must name every key."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

from pydantic import BaseModel

from component.config import Config

EXAMPLE = Path(__file__).parents[2] / "ofnotify.example.yaml"


def keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    found: set[str] = set()
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        found.add(path)
        for sub in _models(field.annotation):
            found |= keys(sub, f"{path}.")
    return found


def _models(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out += _models(arg)
    if isinstance(annotation, types.UnionType):
        for arg in annotation.__args__:
            out += _models(arg)
    return out


def test_every_key_is_documented_in_the_example() -> None:
    text = EXAMPLE.read_text()
    missing = sorted(
        path
        for path in keys(Config)
        if not re.search(rf"^\s*#?\s*(?:- )?{path.rsplit('.', 1)[-1]}:", text, re.M)
    )
    assert missing == []
