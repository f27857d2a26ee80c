"""Routers, one file each, selected by --moe-router-type."""

from __future__ import annotations

import importlib

# name -> "module:Class", imported on demand so a router's extra dependencies stay optional.
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
    """Names accepted by --moe-router-type."""
    return sorted(_ROUTERS)


def router_class(name: str):
    """The Router subclass registered under ``name``."""
    if name not in _ROUTERS:
        raise ValueError(f"--moe-router-type {name!r} is not available (choose from {available_routers()})")
    module_name, class_name = _ROUTERS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)
