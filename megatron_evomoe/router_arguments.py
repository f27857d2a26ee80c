"""The router flags, generated from the routers' ``Config`` classes, and their values read back.

``--moe-router-type`` chooses from the registry (``moe/routers/__init__.py``). The fields every
router has (``moe.router_config.RouterConfig``: ``--moe-aux-loss-coeff``, ``--moe-router-topk``)
are one flag each, defaulting to the chosen router's own value. Every router's own fields become a
flag group of their own (``config_flags.py``: name, type, default and help from the field and its
docstring), so a router's flags change only in its ``Config``. The ``Config`` classes are read
without importing the gates (``moe/routers/__init__.py``), so building the parser loads no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, List

from megatron_evomoe.config_flags import FlagSpec, add_flags, flag_specs, values_from_args
from megatron_evomoe.moe.router_config import RouterConfig, RunShape
from megatron_evomoe.moe.routers import available_routers, router_config_class

ROUTER_GROUP_PREFIX = "router "
"""Titles of the per-router flag groups start with this (``model_args.py`` saves them as model flags)."""

DEFAULT_ROUTER = "switch"


def _shared_specs() -> List[FlagSpec]:
    return flag_specs(RouterConfig)


def _own_specs(config_class: type) -> List[FlagSpec]:
    shared = {field.name for field in dataclasses.fields(RouterConfig)}
    return [spec for spec in flag_specs(config_class) if spec.field not in shared]


def config_default(config_class: type, name: str) -> Any:
    """The default of field ``name`` of a router's ``Config``."""
    return next(field.default for field in dataclasses.fields(config_class) if field.name == name)


def _summary(config_class: type) -> str:
    """The first paragraph of the docstring of the module that holds a router's ``Config``."""
    doc = (sys.modules[config_class.__module__].__doc__ or "").strip()
    return " ".join(doc.split("\n\n")[0].split())


def router_group_title(name: str) -> str:
    """The title of router ``name``'s flag group, e.g. ``router dts: EvoMoE (--moe-router-type dts)``."""
    method = router_config_class(name).METHOD_NAME
    return f"{ROUTER_GROUP_PREFIX}{name}{': ' + method if method else ''} (--moe-router-type {name})"


def add_router_args(parser: argparse.ArgumentParser, moe_group) -> None:
    """``--moe-router-type`` and the shared router flags in ``moe_group``; one group per router."""
    names = available_routers()
    moe_group.add_argument(
        "--moe-router-type", choices=names, default=DEFAULT_ROUTER,
        help="the router (gate) of every MoE layer; its own flags are in its group 'router NAME' below",
    )
    for spec in _shared_specs():
        defaults = ", ".join(f"{name} {config_default(router_config_class(name), spec.field)}" for name in names)
        help_text = f"{spec.kwargs['help'].rstrip('.')}: {defaults}"
        moe_group.add_argument(spec.name, **{**spec.kwargs, "default": None, "help": help_text})
    added = {spec.name for spec in _shared_specs()}
    for name in names:
        config_class = router_config_class(name)
        specs = _own_specs(config_class)
        if specs:
            group = parser.add_argument_group(router_group_title(name), _summary(config_class).replace("%", "%%"))
            add_flags(group, specs, added)


def router_flag_names(name: str) -> frozenset:
    """Every spelling of the flags in router ``name``'s own group (``--no-...`` forms included)."""
    names = set()
    for spec in _own_specs(router_config_class(name)):
        names.add(spec.name)
        if spec.kwargs.get("action") is argparse.BooleanOptionalAction:
            names.add("--no-" + spec.name[2:])
    return frozenset(names)


def flag_owners(flag: str) -> set:
    """The routers whose ``Config`` declares ``flag`` (empty for a flag every router, or none, reads)."""
    return {name for name in available_routers() if flag in router_flag_names(name)}


def selected_topk(args: argparse.Namespace) -> int:
    """``--moe-router-topk``, or the chosen router's default."""
    if args.moe_router_topk is not None:
        return args.moe_router_topk
    return config_default(router_config_class(args.moe_router_type), "topk")


def router_config_from_args(args: argparse.Namespace, run: RunShape) -> RouterConfig:
    """The chosen router's ``Config``, validated and resolved for ``run``.

    Every other router's flags are validated too (their values are not used): a bad value is an
    error whichever router a script selects, so switching routers never uncovers one later.
    """
    selected = router_config_class(args.moe_router_type)
    shared = {args.moe_router_type: values_from_args(_shared_specs(), args, selected)}  # the chosen router's only
    configs = {}
    for name in available_routers():
        config_class = router_config_class(name)
        values = values_from_args(_own_specs(config_class), args, config_class)
        configs[name] = config_class(**values, **shared.get(name, {})).resolved(run)
    return configs[args.moe_router_type]
