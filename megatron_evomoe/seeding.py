"""Randomness that does not depend on the parallel layout: stable seeds and per-parameter init rules.

The same seed must give the same model, the same spawned experts and the same hash tables under any
TP/PP/EP layout (equivalence tests, resumes under a new layout, fair router comparisons). Every such
draw seeds its own generator from names (seed, layer, expert, weight key) through :func:`stable_seed`,
never from a rank's RNG stream. Modules that need a non-default initialiser for a parameter attach it
with :func:`set_init_rule`; ``models/init.py`` applies it to the full (unsharded) tensor.

Below ``models/`` and ``moe/``: both use it, neither imports the other.
"""

from __future__ import annotations

import zlib
from typing import Callable, Optional

import torch

InitRule = Callable[[torch.Tensor], None]
_RULE_ATTR = "layout_invariant_init"


def stable_seed(*parts) -> int:
    """A 31-bit seed from ``parts`` (joined with ``|``): the same on every rank, run and Python."""
    text = "|".join(str(part) for part in parts)
    return zlib.crc32(text.encode()) & 0x7FFFFFFF


def seeded_generator(*parts) -> torch.Generator:
    """A CPU generator seeded with :func:`stable_seed` of ``parts``."""
    return torch.Generator().manual_seed(stable_seed(*parts))


def set_init_rule(param: torch.nn.Parameter, rule: InitRule) -> None:
    """Give ``param`` a custom in-place initialiser of its (full, unsharded) tensor."""
    setattr(param, _RULE_ATTR, rule)


def init_rule(param: torch.nn.Parameter) -> Optional[InitRule]:
    """The rule set with :func:`set_init_rule` (None: the default rule for its key)."""
    return getattr(param, _RULE_ATTR, None)
