"""What the router comparison trains: the variants (router + its flags) and the model sizes.

Every variant trains the same model size on the same token budget (iterations x global batch x
sequence length) with the same seeds; only the MoE layer's routing differs (the dense baseline has
no experts at all). Router-specific flags follow the papers, as stated in ``description``.

Two protocols (``--protocol``): ``default``, a preset for short runs (EvoMoE's phases stretched to
10% + 20% of the steps so the gate learns something before Top-1), and ``paper``, the EvoMoE paper's
setup (``PAPER_VARIANTS``): its phase fractions, its balance-loss weights, every baseline at its
own paper's defaults, and EvoMoE both as implemented here and with Algorithm 2's Top-1 noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

from megatron_evomoe.moe.schedule import resolve_evomoe_phases

PROTOCOLS = ("default", "paper")


@dataclass(frozen=True)
class Variant:
    """One row of the comparison.

    Attributes:
        name: row name and ``--routers`` choice.
        router: ``--moe-router-type`` (None: the dense model, no MoE layers).
        description: what it is and why its flags are what they are (printed with the table).
        extra_flags: ``train_iters -> flags`` added to the common ones (schedules scale with the run).
    """

    name: str
    router: Optional[str]
    description: str
    extra_flags: Callable[[int], List[str]] = lambda train_iters: []

    def flags(self, train_iters: int) -> List[str]:
        """The variant's own flags of pretrain_gpt_moe.py for a run of ``train_iters``."""
        router = [] if self.router is None else ["--moe-router-type", self.router]
        return router + self.extra_flags(train_iters)


def evomoe_schedule(train_iters: int) -> List[str]:
    """EvoMoE's phases scaled to the run: T_S = 10% (shared expert), tau 2.0 -> 0.3 over the next 20%.

    The paper's GPT run is 200k steps with T_S = 10k and 5k annealing steps; short comparison runs
    need proportionally longer phases for the gate to learn anything before Top-1.
    """
    shared = max(1, train_iters // 10)
    anneal = max(1, train_iters // 5)
    return [
        "--moe-aux-loss-coeff", "0.1", "--evomoe-shared-expert-iters", str(shared),
        "--dts-anneal-iters", str(anneal), "--dts-max-temperature", "2.0", "--dts-min-temperature", "0.3",
    ]


def evomoe_ablations(schedule: Callable[[int], List[str]]) -> List[Variant]:
    """EvoMoE's two ablations (paper Table IV) on ``schedule``'s phases."""
    return [
        Variant(
            "evomoe-no-diversify", "dts", "EvoMoE ablation w/o expert-diversify: random experts + DTS from step 0",
            lambda t: schedule(t) + ["--no-expert-diversify"],
        ),
        Variant(
            "evomoe-no-sparsify", "dts", "EvoMoE ablation w/o gate-sparsify: diversify, then Switch Top-1 gate",
            lambda t: schedule(t) + ["--no-gate-sparsify"],
        ),
    ]


DENSE = Variant("dense", None, "the backbone without experts (every FFN dense)")
BASE = Variant("base", "base", "BASE layers: balanced assignment by auction, no aux loss")
HASH = Variant(
    "hash", "hash", "Hash layers, balanced hash from training-data token frequencies", lambda t: ["--hash-type", "balanced"]
)
STABLEMOE = Variant(
    "stablemoe", "stablemoe",
    "StableMoE: stage 1 (routing learned + distilled) for 10% of the steps, then frozen; balance loss 0.1 "
    "(EvoMoE sec. V-A)",
    lambda t: ["--moe-aux-loss-coeff", "0.1", "--stablemoe-stage1-iters", str(max(1, t // 10))],
)
DSELECTK = Variant("dselectk", "dselectk", "DSelect-k, k = 2, smooth-step gate, entropy regulariser on the official scale")

VARIANTS: Dict[str, Variant] = {
    v.name: v
    for v in [
        DENSE,
        Variant(
            "switch", "switch", "Switch Top-1, balance loss 0.1 (the EvoMoE paper's setting)",
            lambda t: ["--moe-aux-loss-coeff", "0.1"],
        ),
        Variant("gshard", "gshard", "GShard Top-2, balance loss 0.01 (its paper's default)"),
        BASE,
        HASH,
        STABLEMOE,
        DSELECTK,
        Variant(
            "evomoe", "dts",
            "EvoMoE: shared expert for 10% of the steps, diversify, DTS gate tau 2.0 -> 0.3 over 20%, then Top-1",
            evomoe_schedule,
        ),
        *evomoe_ablations(evomoe_schedule),
    ]
}

PAPER_BALANCE_COEFF = "0.1"
"""EvoMoE sec. V-A (Hyper-Parameter Detail): "The coefficient of balance loss is set as 0.1 in
Switch-Transformer, StableMoE and our EvoMoE"."""


def paper_evomoe_flags(train_iters: int) -> List[str]:
    """The EvoMoE paper's phases (sec. V-B/V-C): T_S = 5% of the steps, then tau 2.0 -> 0.3 over 5%
    (``moe.schedule.resolve_evomoe_phases``, the library defaults, written out), balance weight 0.1;
    evaluations during the dense phase also score the model as served (Top-1)."""
    phases = resolve_evomoe_phases(train_iters)
    return [
        "--moe-aux-loss-coeff", PAPER_BALANCE_COEFF,
        "--evomoe-shared-expert-iters", str(phases.shared_expert_iters),
        "--dts-anneal-iters", str(phases.anneal_iters),
        "--dts-max-temperature", "2.0", "--dts-min-temperature", "0.3", "--eval-as-served",
    ]


PAPER_VARIANTS: Dict[str, Variant] = {
    v.name: v
    for v in [
        DENSE,
        Variant(
            "switch", "switch",
            "Switch Top-1, balance loss 0.1 (EvoMoE sec. V-A), router input jitter 1e-2 (Switch Table 11)",
            lambda t: ["--moe-aux-loss-coeff", PAPER_BALANCE_COEFF, "--moe-input-jitter-eps", "0.01"],
        ),
        Variant(
            "gshard", "gshard", "GShard Top-2 with random routing of the 2nd expert (Algorithm 1), balance loss 0.01",
            lambda t: ["--moe-aux-loss-coeff", "0.01", "--gshard-random-routing"],
        ),
        BASE,
        HASH,
        STABLEMOE,
        DSELECTK,
        Variant(
            "evomoe", "dts",
            "EvoMoE: shared expert for 5% of the steps, diversify, DTS gate tau 2.0 -> 0.3 over 5%, then "
            "Top-1 without gumbel noise (this repository's default)",
            paper_evomoe_flags,
        ),
        Variant(
            "evomoe-top1-noise", "dts",
            "EvoMoE as Algorithm 2 writes it: gumbel noise also in the Top-1 phase (--dts-top1-noise)",
            lambda t: paper_evomoe_flags(t) + ["--dts-top1-noise"],
        ),
        *evomoe_ablations(paper_evomoe_flags),
    ]
}

PAPER_SEEDS = [1, 2, 3]
"""Seeds of ``--protocol paper`` unless ``--seeds`` is given (at least three for a spread)."""

ALIASES = {"dts": "evomoe"}


def protocol_variants(protocol: str) -> Dict[str, Variant]:
    """The variants of ``protocol`` (``default`` or ``paper``) by name, in table order."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown --protocol {protocol!r} (choose from {list(PROTOCOLS)})")
    return PAPER_VARIANTS if protocol == "paper" else VARIANTS


@dataclass(frozen=True)
class ModelSize:
    """A model preset: ``flags`` of pretrain_gpt_moe.py; ``moe_flags`` only for MoE variants."""

    name: str
    flags: List[str]
    moe_flags: List[str]


MODEL_SIZES: Dict[str, ModelSize] = {
    # Minutes on 2 CPU cores for the whole suite: one MoE layer (layer 0 of 2), 4 experts.
    "tiny": ModelSize(
        "tiny",
        ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "2", "--seq-length", "64"],
        ["--num-experts", "4", "--moe-layer-freq", "2"],
    ),
    # tools/demo.py's model: 4 layers, MoE on layers 0 and 2.
    "demo": ModelSize(
        "demo",
        ["--num-layers", "4", "--hidden-size", "128", "--num-attention-heads", "4", "--seq-length", "128"],
        ["--num-experts", "4", "--moe-layer-freq", "2"],
    ),
    "gpt-small": ModelSize(
        "gpt-small",
        ["--num-layers", "12", "--hidden-size", "768", "--num-attention-heads", "12", "--seq-length", "1024"],
        ["--num-experts", "8", "--moe-layer-freq", "2"],
    ),
    # The paper's GPT-MoE: 24 layers, hidden 1024, 16 heads, 16 experts on every other FFN.
    "gpt-paper": ModelSize(
        "gpt-paper",
        ["--num-layers", "24", "--hidden-size", "1024", "--num-attention-heads", "16", "--seq-length", "1024"],
        ["--num-experts", "16", "--moe-layer-freq", "2"],
    ),
}


def resolve_variants(names: Sequence[str], protocol: str = "default") -> List[Variant]:
    """Variants of ``protocol`` by name (``dts`` means ``evomoe``), in the protocol's order."""
    variants = protocol_variants(protocol)
    wanted = {ALIASES.get(n, n) for n in names}
    unknown = wanted - set(variants)
    if unknown:
        raise ValueError(f"unknown --routers {sorted(unknown)} (choose from {list(variants)})")
    return [v for name, v in variants.items() if name in wanted]


def split_available(variants: Sequence[Variant], available_routers: Sequence[str]) -> tuple[list, dict]:
    """(variants whose router is registered, {name: why skipped} for the others)."""
    ready, skipped = [], {}
    for variant in variants:
        if variant.router is None or variant.router in available_routers:
            ready.append(variant)
        else:
            skipped[variant.name] = f"router {variant.router!r} is not registered in megatron_evomoe.moe.routers"
    return ready, skipped
