"""The settings as a table: for a section's dataclass, each settable name, its type and its rule.

Both the section builder (``load.py``) and the environment check (``env.py``) read this table, so
a field added to a dataclass in ``settings.py`` is checked and settable everywhere at once.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.config.settings import Config, Rule, rule_of


@dataclass(frozen=True, slots=True)
class Entry:
    """One settable field of a section."""

    name: str
    kind: Any  # the field's type, ``X | None`` unwrapped
    optional: bool  # None is accepted (and means the default)
    rule: Rule
    section: type | None  # the nested dataclass it holds, if any
    by_name: bool  # a mapping by name: deployments, models, prices, cache.model_ttls


def _entry(f: dataclasses.Field[Any], hint: Any) -> Entry:
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = len(args) < len(typing.get_args(hint)), args[0]
    rule = rule_of(f)
    by_name = rule.by_name
    inner = hint
    if typing.get_origin(hint) is Mapping:
        by_name, inner = True, typing.get_args(hint)[1]
    section = inner if dataclasses.is_dataclass(inner) and isinstance(inner, type) else None
    return Entry(f.name, hint, optional, rule, section, by_name)


_TABLES: dict[type, Mapping[str, Entry]] = {}


def entries(cls: type) -> Mapping[str, Entry]:
    """The settable fields of a section's dataclass by name, deprecated names included."""
    if cls not in _TABLES:
        _TABLES[cls] = _table(cls)
    return _TABLES[cls]


def _table(cls: type) -> Mapping[str, Entry]:
    hints = typing.get_type_hints(cls)
    table: dict[str, Entry] = {}
    for f in dataclasses.fields(cls):
        entry = _entry(f, hints[f.name])
        if entry.rule.settable:
            table[f.name] = entry
            if entry.rule.alias:
                table[entry.rule.alias] = entry
    return table


def setting_at(parts: list[str], cls: type = Config) -> Entry | None:
    """The field a setting path names (``["cache", "model_ttls", "demo"]``), or None."""
    entry = entries(cls).get(parts[0])
    if entry is None:
        return None
    rest = parts[1:]
    if entry.by_name and rest:
        rest = rest[1:]  # a deployment's, model's or price's name
    if not rest:
        return entry
    return None if entry.section is None else setting_at(rest, entry.section)
