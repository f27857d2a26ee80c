"""``--sweep FLAG=v1,v2,...``: a grid of comparison rows over ``pretrain_gpt_moe.py`` flags.

Each sweep names one flag and its values; several sweeps give their product. A sweep applies to the
variants that take its flag (:func:`takes`): router-specific flags (``--evomoe-*``, ``--dts-*``,
``--gshard-*``, ..., Switch's ``--moe-input-jitter-eps``) to that router's variants, MoE flags
(``--num-experts``, ``--moe-*``, ``--expert-*``) to every MoE variant, anything else to every variant.
A variant gets one row per point of the product of the sweeps it takes (one row, as without
sweeps, when it takes none). Values are checked against the flag's definition before anything runs.

Special sweeps:

* ``--train-iters``: the run length. Everything the comparison derives from it follows each point:
  evaluation, logging and checkpoint intervals (unless given explicitly), the warm-up, EvoMoE's
  phases and StableMoE's stage 1.
* ``evomoe-shared-fraction`` / ``dts-anneal-fraction``: EvoMoE's T_S and annealing length as
  fractions of the point's ``--train-iters`` (floor, at least one step for a fraction > 0), passed as
  ``--evomoe-shared-expert-iters`` / ``--dts-anneal-iters``.
* on/off flags take ``true``/``false`` (also on/off, yes/no, 1/0): ``--dts-top1-noise=true,false``
  adds the flag or removes it (also from a preset), ``--gshard-random-routing=false`` gives
  ``--no-gshard-random-routing``.

Flags the comparison sets per run (``--seed``, ``--data-seed``, ``--moe-router-type``, ``--log-json``,
``--save``, ``--load``, ``--save-interval``) cannot be swept; a flag also passed through, or swept
twice, is an error.
"""

from __future__ import annotations

import argparse
import itertools
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from megatron_evomoe.analysis.router_suite import Variant
from megatron_evomoe.errors import InputError

FRACTION_FLAGS = {
    "--evomoe-shared-fraction": "--evomoe-shared-expert-iters",
    "--dts-anneal-fraction": "--dts-anneal-iters",
}
"""Sweep-only flags: a fraction of the run's iterations, and the pretrain flag it becomes."""

NOT_SWEEPABLE = {
    "--seed": "the model seeds are --seeds",
    "--data-seed": "every run shares one data order (the comparison's --data-seed), which pairs the seeds",
    "--moe-router-type": "pick variants with --routers",
    "--log-json": "set per run by the comparison",
    "--save": "set per run by the comparison",
    "--load": "set per run by the comparison",
    "--save-interval": "set per run by the comparison (its own --save-interval)",
}

MOE_FLAG_PREFIXES = ("--num-experts", "--moe-", "--expert-")
"""Flags of the MoE layer: every MoE variant takes them, the dense one none."""

TRUE, FALSE = "true", "false"
_BOOLEAN = {"true": TRUE, "on": TRUE, "yes": TRUE, "1": TRUE, "false": FALSE, "off": FALSE, "no": FALSE, "0": FALSE}


def takes(router: Optional[str], flag: str) -> bool:
    """Whether a variant with ``--moe-router-type router`` (None: dense) reads ``flag``: a router's own
    flags (its ``Config``'s, ``router_arguments.flag_owners``) only that router's variants."""
    if not flag:
        return True
    from megatron_evomoe.router_arguments import flag_owners  # megatron-core: only when sweeping

    owners = flag_owners(flag)
    if owners:
        return router in owners
    if flag.startswith(MOE_FLAG_PREFIXES):
        return router is not None
    return True


@dataclass(frozen=True)
class Sweep:
    """One ``--sweep``: a flag and its values (canonical text).

    ``kind``: ``value`` (``FLAG VALUE``), ``switch`` (a flag without value: true adds it, false
    removes it), ``toggle`` (``--x`` / ``--no-x``; ``negative`` is the other spelling), ``fraction``
    (:data:`FRACTION_FLAGS`), ``train_iters``.
    """

    flag: str
    values: Tuple[str, ...]
    kind: str = "value"
    negative: Optional[str] = None

    def flags(self, value: str, train_iters: int) -> List[str]:
        """The pretrain flags of ``value`` in a run of ``train_iters`` iterations."""
        if self.kind == "value":
            return [self.flag, value]
        if self.kind == "switch":
            return [self.flag] if value == TRUE else []
        if self.kind == "toggle":
            return [self.flag if value == TRUE else self.negative]
        if self.kind == "fraction":
            return [FRACTION_FLAGS[self.flag], str(iterations_of(float(value), train_iters))]
        return []  # train_iters: the run's length, not a flag of its own

    def replaces(self) -> List[Tuple[str, bool]]:
        """``(flag, takes a value)`` that this sweep sets: taken out of the presets, so that the swept
        value is the run's only one (and a switched-off flag is off)."""
        if self.kind == "value":
            return [(self.flag, True)]
        if self.kind == "fraction":
            return [(FRACTION_FLAGS[self.flag], True)]
        if self.kind == "switch":
            return [(self.flag, False)]
        if self.kind == "toggle":
            return [(self.flag, False), (self.negative, False)]
        return []  # train_iters: the presets are computed for the point's length


def iterations_of(fraction: float, train_iters: int) -> int:
    """floor(fraction x train_iters), at least 1 for a fraction > 0 (as the paper's 5% defaults)."""
    steps = int(round(fraction * train_iters, 6))
    return max(1, steps) if fraction > 0 else 0


def extract_sweeps(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(``--sweep`` texts, the other arguments): ``--sweep X`` and ``--sweep=X`` are taken out
    before argparse, which would read ``--sweep --num-experts=4,8`` as two options."""
    texts, rest = [], []
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--sweep":
            if i + 1 >= len(tokens):
                raise InputError("--sweep needs FLAG=v1,v2,... (e.g. --sweep --num-experts=4,8)")
            texts.append(tokens[i + 1])
            i += 2
            continue
        if token.startswith("--sweep="):
            texts.append(token[len("--sweep="):])
        else:
            rest.append(token)
        i += 1
    return texts, rest


def parse_sweep(text: str, parser: Optional[argparse.ArgumentParser]) -> Sweep:
    """``FLAG=v1,v2,...`` (FLAG with or without ``--``) checked against ``parser`` (pretrain's flags)."""
    if "=" not in text:
        raise InputError(f"--sweep {text}: expected FLAG=v1,v2,... (e.g. --sweep --num-experts=4,8)")
    name, _, listed = text.partition("=")
    flag = "--" + name.lstrip("-")
    values = [v.strip() for v in listed.split(",")]
    where = f"--sweep {text}"
    if not listed or any(not v for v in values):
        raise InputError(f"{where}: empty value in the list")
    if len(set(values)) != len(values):
        raise InputError(f"{where}: a value is listed twice")
    if flag in NOT_SWEEPABLE:
        raise InputError(f"{where}: {flag} cannot be swept ({NOT_SWEEPABLE[flag]})")
    if flag == "--train-iters":
        return Sweep(flag, tuple(str(_number(v, int, where, minimum=1)) for v in values), "train_iters")
    if flag in FRACTION_FLAGS:
        fractions = [_number(v, float, where, minimum=0.0) for v in values]
        if any(f > 1 for f in fractions):
            raise InputError(f"{where}: a fraction of the run must be in [0, 1]")
        return Sweep(flag, tuple(values), "fraction")
    action = parser._option_string_actions.get(flag) if parser is not None else None
    if action is None:
        raise InputError(f"{where}: pretrain_gpt_moe.py has no flag {flag}"
                         + f" (sweep-only flags: {', '.join(f[2:] for f in FRACTION_FLAGS)})")
    if isinstance(action, argparse.BooleanOptionalAction) or action.nargs == 0:
        canonical = tuple(_boolean(v, where) for v in values)
        if isinstance(action, argparse.BooleanOptionalAction):
            negative = next(s for s in action.option_strings if s != flag)
            return Sweep(flag, canonical, "toggle", negative)
        return Sweep(flag, canonical, "switch")
    for value in values:
        _check_value(action, value, where)
    return Sweep(flag, tuple(values), "value")


def _number(text: str, kind, where: str, minimum):
    try:
        value = kind(text)
    except ValueError:
        raise InputError(f"{where}: {text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if value < minimum:
        raise InputError(f"{where}: {text} is below {minimum}")
    return value


def _boolean(text: str, where: str) -> str:
    if text.lower() not in _BOOLEAN:
        raise InputError(f"{where}: {text!r} is not true/false (an on/off flag)")
    return _BOOLEAN[text.lower()]


def _check_value(action: argparse.Action, text: str, where: str) -> None:
    value = text
    if callable(action.type):
        try:
            value = action.type(text)
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            name = getattr(action.type, "__name__", "the flag's type")
            raise InputError(f"{where}: {text!r} is not a valid {name}") from None
    if action.choices is not None and value not in action.choices:
        raise InputError(f"{where}: {text!r} is not one of {list(action.choices)}")


def check_sweeps(sweeps: Sequence[Sweep], passthrough: Sequence[str], variants: Sequence[Variant]) -> None:
    """Reject a flag swept twice, also passed through, or read by none of ``variants``."""
    seen: Dict[str, str] = {}
    for sweep in sweeps:
        spellings = {sweep.flag, sweep.negative, FRACTION_FLAGS.get(sweep.flag)} - {None}
        for spelling in spellings:
            if spelling in seen:
                raise InputError(f"--sweep {sweep.flag} and --sweep {seen[spelling]} both set {spelling}")
            seen[spelling] = sweep.flag
        given = [s for s in spellings if any(t == s or t.startswith(s + "=") for t in passthrough)]
        if given:
            raise InputError(f"--sweep {sweep.flag}: {given[0]} is also given as a flag for every run; keep one")
        target = FRACTION_FLAGS.get(sweep.flag, sweep.flag)
        if not any(takes(v.router, target) for v in variants):
            raise InputError(
                f"--sweep {sweep.flag}: none of the selected variants ({', '.join(v.name for v in variants)}) reads it"
            )


def load_pretrain_parser() -> argparse.ArgumentParser:
    """pretrain_gpt_moe.py's flags (imports megatron-core: only needed when sweeping)."""
    from megatron_evomoe.arguments import build_parser

    return build_parser("pretrain_gpt_moe.py")


def parse_sweeps(texts: Sequence[str]) -> List[Sweep]:
    """Every ``--sweep`` text parsed and checked against pretrain's flags."""
    if not texts:
        return []
    parser = load_pretrain_parser()
    return [parse_sweep(text, parser) for text in texts]


# -------------------------------------------------------------------------------------- the grid
@dataclass(frozen=True)
class GridPoint:
    """The swept values of one row: ``((flag, value), ...)`` in sweep order (empty: not swept)."""

    values: Tuple[Tuple[str, str], ...] = ()

    def get(self, flag: str) -> Optional[str]:
        return dict(self.values).get(flag)

    def label(self) -> str:
        """``num-experts=16,evomoe-mask-ratio=0.2``: the row name's suffix and its run directory."""
        return ",".join(f"{flag.lstrip('-')}={value}" for flag, value in self.values)

    def as_dict(self) -> Dict[str, str]:
        return dict(self.values)


@dataclass(frozen=True)
class Row:
    """One row of the comparison: a variant at one grid point."""

    variant: Variant
    point: GridPoint = GridPoint()

    @property
    def name(self) -> str:
        """``evomoe`` unswept, ``evomoe[num-experts=16,evomoe-mask-ratio=0.2]`` at a grid point."""
        return f"{self.variant.name}[{self.point.label()}]" if self.point.values else self.variant.name

    def directory(self) -> str:
        """Path of its runs under ``runs/`` (one directory per seed below it)."""
        if not self.point.values:
            return self.variant.name
        return os.path.join(self.variant.name, self.point.label().replace(os.sep, "_"))


def grid(variant: Variant, sweeps: Sequence[Sweep]) -> List[GridPoint]:
    """The points of the sweeps ``variant`` reads, in sweep order (one empty point without any)."""
    mine = [s for s in sweeps if takes(variant.router, FRACTION_FLAGS.get(s.flag, s.flag))]
    return [GridPoint(tuple(zip((s.flag for s in mine), combo))) for combo in itertools.product(*(s.values for s in mine))]


def reference_point(reference: Variant, point: GridPoint, sweeps: Sequence[Sweep]) -> GridPoint:
    """``reference``'s point to pair ``point`` with: the same value of every swept flag both read;
    for a flag only the reference reads, the sweep's first value."""
    values = []
    for sweep in sweeps:
        if takes(reference.router, FRACTION_FLAGS.get(sweep.flag, sweep.flag)):
            values.append((sweep.flag, point.get(sweep.flag) or sweep.values[0]))
    return GridPoint(tuple(values))


def point_flags(sweeps: Sequence[Sweep], point: GridPoint, train_iters: int) -> Tuple[List[str], List[Tuple[str, bool]]]:
    """(flags to add, ``(flag, takes a value)`` to take out of the presets) for ``point`` in a run of
    ``train_iters`` iterations."""
    by_flag = {s.flag: s for s in sweeps}
    add, replaced = [], []
    for flag, value in point.values:
        add += by_flag[flag].flags(value, train_iters)
        replaced += by_flag[flag].replaces()
    return add, replaced


def without_flags(argv: Sequence[str], flags: Sequence[Tuple[str, bool]]) -> List[str]:
    """``argv`` without every occurrence of ``flags`` (and, for flags that take one, the values after
    them up to the next ``--`` option)."""
    takes_value = dict(flags)
    kept, i = [], 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token not in takes_value:
            kept.append(token)
            continue
        if takes_value[token]:
            while i < len(argv) and not argv[i].startswith("--"):
                i += 1
    return kept


def flag_groups(argv: Sequence[str]) -> List[Tuple[str, List[str]]]:
    """``argv`` as ``(flag name, [the flag and its values])`` groups; a group starts at each ``--`` option
    (``--flag=value`` is one token named ``--flag``), tokens before the first option form a group named ""."""
    groups: List[Tuple[str, List[str]]] = []
    for token in argv:
        if token.startswith("--") or not groups:
            groups.append((token.split("=", 1)[0] if token.startswith("--") else "", []))
        groups[-1][1].append(token)
    return groups


def point_train_iters(point: GridPoint, default: int) -> int:
    value = point.get("--train-iters")
    return int(value) if value is not None else default
