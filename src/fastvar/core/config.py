"""Configs are dataclasses whose fields are the official constructor argument names."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

from ..errors import FastVARError

T = TypeVar("T")


def config_from_kwargs(cls: type[T], kwargs: Mapping[str, Any], what: str) -> T:
    """Build dataclass ``cls`` from official keyword arguments (JSON lists become tuples); unknown names are an error."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise FastVARError(f"unknown {what} argument(s) {unknown}; known: {sorted(names)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
