"""Routers, one file each, selected by --moe-router-type: the only list of router names.

Adding a router is one file under ``moe/routers/`` (a :class:`~megatron_evomoe.moe.router.Router`
subclass with its nested ``Config``) and one line here; ``arguments.py`` generates its flags from
the ``Config``. Plugins and tests can add one at run time with :func:`register_router`.
"""

from __future__ import annotations

import importlib

from megatron_evomoe.errors import InputError

# name -> "module:Class", imported on demand.
_ROUTERS = {
    "switch": "megatron_evomoe.moe.routers.switch:SwitchRouter",
    "gshard": "megatron_evomoe.moe.routers.gshard:GShardRouter",
    "base": "megatron_evomoe.moe.routers.base:BaseRouter",
    "hash": "megatron_evomoe.moe.routers.hash:HashRouter",
    "stablemoe": "megatron_evomoe.moe.routers.stablemoe:StableMoERouter",
    "dselectk": "megatron_evomoe.moe.routers.dselectk:DSelectKRouter",
    "dts": "megatron_evomoe.moe.routers.dts:DTSRouter",
}


def available_routers() -> list[str]:
    """Names accepted by --moe-router-type, in registration order."""
    return list(_ROUTERS)


def router_class(name: str):
    """The Router subclass registered under ``name``."""
    if name not in _ROUTERS:
        raise InputError(f"--moe-router-type {name!r} is not available (choose from {available_routers()})")
    module_name, class_name = _ROUTERS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def register_router(name: str, target: str) -> None:
    """Make ``--moe-router-type name`` the Router subclass at ``target`` ("module:Class")."""
    if name in _ROUTERS and _ROUTERS[name] != target:
        raise ValueError(f"router {name!r} is already registered as {_ROUTERS[name]}")
    _ROUTERS[name] = target


def unregister_router(name: str) -> None:
    """Undo :func:`register_router` (tests)."""
    _ROUTERS.pop(name, None)
