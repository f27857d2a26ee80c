"""Checkpoint -> Hugging Face directory: load on one process, convert, write (``tools/export_hf.py``)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Optional

from megatron_evomoe.export.gpt_checkpoint import ServingModel, load_serving_model
from megatron_evomoe.export.hf_convert import convert_gpt
from megatron_evomoe.export.hf_writer import write_hf_directory


def provenance(source: ServingModel) -> dict[str, Any]:
    """What config.json records about the exported checkpoint."""
    config = source.run.model
    return {
        "checkpoint": source.checkpoint,
        "iteration": source.iteration,
        "moe_router_type": config.moe_router_type if config.num_moe_experts else None,
        "routing_state": asdict(source.routing_state) if source.routing_state is not None else None,
        "moe_expert_capacity_factor": config.moe_expert_capacity_factor,
    }


def export_checkpoint(
    root: str,
    output_dir: str,
    iteration: Optional[int] = None,
    tokenizer_overrides: Optional[dict[str, Any]] = None,
    overwrite: bool = False,
    dtype: str = "float32",
) -> tuple[str, ServingModel]:
    """Export checkpoint ``root`` to ``output_dir``; returns (the directory, the loaded source model).

    Needs a world of one initialised (``initialize.initialize(ParallelLayout())``).
    """
    source = load_serving_model(root, iteration, tokenizer_overrides)
    hf_model = convert_gpt(source.model, source.run.model, source.routing_state)
    directory = write_hf_directory(hf_model, output_dir, source.tokenizer, provenance(source), overwrite, dtype)
    return directory, source
