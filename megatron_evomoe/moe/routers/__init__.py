"""Routers, selected by --moe-router-type: the only list of router names.

A router is its gate (a :class:`~megatron_evomoe.moe.router.Router` subclass, ``<name>.py``) and its
hyper-parameters (a ``Config(RouterConfig)`` dataclass, ``<name>_config.py``, which the gate names
as its ``Config``); ``router_arguments.py`` generates its flags from the ``Config``. The ``Config``
lives in a module of its own, free of torch, so that the flag parser -- and ``--help`` -- lists every
router's flags without loading torch or megatron-core: this module imports neither, and a gate is
imported only when a run builds it.

Adding a router is its files under ``moe/routers/`` and one line here. Plugins and tests can add one
at run time with :func:`register_router`; a plugin's ``Config`` may stay nested in its gate's module
(the parser then imports that module, torch and all).
"""

from __future__ import annotations

import importlib
from typing import NamedTuple, Optional

from megatron_evomoe.errors import InputError


class _Entry(NamedTuple):
    router: str
    """``"module:Class"`` of the Router subclass (imports torch)."""
    config: Optional[str] = None
    """``"module:Class"`` of its ``Config`` in a torch-free module (None: the Router's ``Config``)."""


_PACKAGE = "megatron_evomoe.moe.routers"

# name -> where its gate and its Config are, imported on demand.
_ROUTERS = {
    "switch": _Entry(f"{_PACKAGE}.switch:SwitchRouter", f"{_PACKAGE}.switch_config:SwitchConfig"),
    "gshard": _Entry(f"{_PACKAGE}.gshard:GShardRouter", f"{_PACKAGE}.gshard_config:GShardConfig"),
    "base": _Entry(f"{_PACKAGE}.base:BaseRouter", f"{_PACKAGE}.base_config:BaseConfig"),
    "hash": _Entry(f"{_PACKAGE}.hash:HashRouter", f"{_PACKAGE}.hash_config:HashConfig"),
    "stablemoe": _Entry(f"{_PACKAGE}.stablemoe:StableMoERouter", f"{_PACKAGE}.stablemoe_config:StableMoEConfig"),
    "dselectk": _Entry(f"{_PACKAGE}.dselectk:DSelectKRouter", f"{_PACKAGE}.dselectk_config:DSelectKConfig"),
    "dts": _Entry(f"{_PACKAGE}.dts:DTSRouter", f"{_PACKAGE}.dts_config:DTSConfig"),
}


def _load(target: str):
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def _entry(name: str) -> _Entry:
    if name not in _ROUTERS:
        raise InputError(f"--moe-router-type {name!r} is not available (choose from {available_routers()})")
    return _ROUTERS[name]


def available_routers() -> list[str]:
    """Names accepted by --moe-router-type, in registration order."""
    return list(_ROUTERS)


def router_class(name: str):
    """The Router subclass registered under ``name`` (imports torch and megatron-core)."""
    return _load(_entry(name).router)


def router_config_class(name: str) -> type:
    """The ``Config`` class of router ``name``, without importing its gate where it lives apart."""
    entry = _entry(name)
    return _load(entry.config) if entry.config else router_class(name).Config


def register_router(name: str, target: str, config: Optional[str] = None) -> None:
    """Make ``--moe-router-type name`` the Router subclass at ``target`` ("module:Class"); ``config``:
    its ``Config`` class ("module:Class") where that module is lighter than the gate's."""
    entry = _Entry(target, config)
    if name in _ROUTERS and _ROUTERS[name] != entry:
        raise ValueError(f"router {name!r} is already registered as {_ROUTERS[name].router}")
    _ROUTERS[name] = entry


def unregister_router(name: str) -> None:
    """Undo :func:`register_router` (tests)."""
    _ROUTERS.pop(name, None)
