"""Command-line flags generated from config dataclasses: a field and its docstring *are* the flag.

A field ``dts_threshold: float = 0.001`` followed by a docstring becomes ``--dts-threshold`` (the
field name with dashes) of type float, default 0.001, with the docstring as its help text. What a
field cannot say goes in its metadata through :func:`flag`:

* ``name``: the flag's own name where it is not the field's, e.g. Megatron-LM's
  ``--moe-input-jitter-eps`` for ``jitter_eps``; a ``--no-...`` name for a field that defaults to
  True gives a flag that turns it off (``--no-expert-diversify``);
* ``choices``: the accepted values (``Literal[...]`` annotations give them too).

Booleans: False by default -> ``--x`` sets it; True by default -> ``--x/--no-x``, or only the
``--no-...`` name when one is given. ``Optional[T] = None`` fields are values resolved later from the
rest of the run (their docstring says how); their flag defaults to None. Fields with
``flag(hidden=True)`` get no flag.

Like megatron-core's ``ArgumentGroupFactory`` over ``TransformerConfig``: the config class is the one
place that names, types, documents and defaults an option; ``arguments.py`` only places the
generated flags in groups and reads them back with :func:`values_from_args`.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import typing
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

_META_KEY = "flag"


@dataclass(frozen=True)
class FlagMeta:
    """What :func:`flag` records in a field's metadata."""

    name: Optional[str] = None
    choices: Optional[Tuple[Any, ...]] = None
    hidden: bool = False


def flag(
    default: Any = dataclasses.MISSING,
    *,
    name: Optional[str] = None,
    choices: Optional[Iterable[Any]] = None,
    hidden: bool = False,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with flag metadata (see the module docstring)."""
    meta = {_META_KEY: FlagMeta(name, tuple(choices) if choices is not None else None, hidden)}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


@dataclass(frozen=True)
class FlagSpec:
    """One generated flag: its name, the field it fills and how argparse reads it."""

    field: str
    """The config field the flag's value goes to."""
    name: str
    """``--flag-name``."""
    dest: str
    """argparse's destination (the name with underscores; recorded in ``model_args.json``)."""
    kwargs: Dict[str, Any]
    """``add_argument`` keywords (type, default, choices, action, help)."""
    negated: bool = False
    """A ``--no-...`` flag of a True-by-default field: the field is ``not`` the flag's value."""


def field_docs(cls: type) -> Dict[str, str]:
    """Attribute docstrings of ``cls`` and its dataclass bases (the string right after a field),
    whitespace collapsed; a subclass's docstring wins over its base's."""
    docs: Dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # no source (e.g. built in an interpreter session)
            continue
        body = ast.parse(source).body[0].body
        for node, after in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def flag_specs(cls: type, fields: Optional[Iterable[str]] = None) -> List[FlagSpec]:
    """The flags of dataclass ``cls`` (of the named ``fields`` only, when given), in field order."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    wanted = None if fields is None else set(fields)
    specs = []
    for field in dataclasses.fields(cls):
        meta: FlagMeta = field.metadata.get(_META_KEY, FlagMeta())
        if meta.hidden or not field.init or (wanted is not None and field.name not in wanted):
            continue
        name = meta.name or "--" + field.name.replace("_", "-")
        dest = name[2:].replace("-", "_")
        kind = _unwrap_optional(hints[field.name])
        default = _default_of(field)
        kwargs: Dict[str, Any] = {"dest": dest, "help": docs.get(field.name, "").replace("%", "%%")}
        negated = False
        if kind is bool:
            if default and name.startswith("--no-"):
                kwargs.update(action="store_true", default=False)
                negated = True
            elif default:
                kwargs.update(action=argparse.BooleanOptionalAction, default=True)
            else:
                kwargs.update(action="store_true", default=False)
        else:
            choices = meta.choices
            if typing.get_origin(kind) is typing.Literal:
                choices = choices or typing.get_args(kind)
                kind = type(choices[0])
            kwargs.update(type=kind, default=default)
            if choices is not None:
                kwargs["choices"] = list(choices)
        specs.append(FlagSpec(field.name, name, dest, kwargs, negated))
    return specs


def add_flags(group, specs: Iterable[FlagSpec], added: Optional[set] = None) -> None:
    """Add ``specs`` to an argparse group; flags already in ``added`` (names) are skipped (a flag
    that several configs declare is defined once)."""
    for spec in specs:
        if added is not None:
            if spec.name in added:
                continue
            added.add(spec.name)
        group.add_argument(spec.name, **spec.kwargs)


def values_from_args(specs: Iterable[FlagSpec], args: argparse.Namespace, cls: type) -> Dict[str, Any]:
    """``{field: value}`` for the flags in ``args``. A None where ``cls``'s field is not Optional
    (a shared flag left to each config's own default, or an older record) is left out, so the
    field keeps its default."""
    hints = typing.get_type_hints(cls)
    values = {}
    for spec in specs:
        if not hasattr(args, spec.dest):
            continue
        value = getattr(args, spec.dest)
        if spec.negated:
            value = not value
        if value is None and _unwrap_optional(hints[spec.field]) is hints[spec.field]:
            continue
        values[spec.field] = value
    return values
