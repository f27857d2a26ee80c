"""Write a Hugging Face model directory: config.json, model.safetensors, the modeling file, tokenizer.

The directory is self-contained: ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``
finds the classes through ``auto_map`` in ``config.json``, and ``AutoTokenizer.from_pretrained(dir)``
a ``PreTrainedTokenizerFast`` over the run's tokenizer (our tokenizers are all Hugging Face
``tokenizers`` pipelines, written as they are). Writing needs ``safetensors`` only; loading needs
``transformers`` (both in the ``[hf]`` extra). The directory is written under a temporary name and
renamed, so an interrupted export leaves no half directory behind.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Optional

import torch

from megatron_evomoe.errors import InputError
from megatron_evomoe.export.hf_convert import HFModel

MODELING_FILE = "modeling_evomoe_gpt.py"
MODEL_TYPE = "evomoe_gpt"
ARCHITECTURE = "EvoMoEGPTForCausalLM"
TOKEN_KEYS = {"eod": "eos_token", "pad": "pad_token", "unk": "unk_token", "cls": "cls_token",
              "sep": "sep_token", "mask": "mask_token"}
"""Our tokenizer roles -> PreTrainedTokenizerFast's special-token keywords."""


def _save_safetensors(tensors: dict, path: str, metadata: dict) -> None:
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise InputError("the Hugging Face export needs safetensors: pip install -e '.[hf]'") from None
    save_file(tensors, path, metadata=metadata)


def write_tokenizer_files(tokenizer, directory: str, max_length: int) -> dict[str, Optional[int]]:
    """tokenizer.json + tokenizer_config.json; returns the bos/eos/pad ids for config.json."""
    with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as handle:
        handle.write(tokenizer.to_json())
    special = tokenizer.special_tokens()
    settings: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,
        **{TOKEN_KEYS[role]: token for role, token in special.items() if role in TOKEN_KEYS},
    }
    if "eod" in special:  # documents are separated by EOD in training: it also starts one
        settings["bos_token"] = special["eod"]
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as handle:
        json.dump(settings, handle, indent=1, sort_keys=True)
    eod = tokenizer.eod if "eod" in special else None
    pad = tokenizer.pad if "pad" in special else None
    return {"bos_token_id": eod, "eos_token_id": eod, "pad_token_id": pad}


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def write_hf_directory(
    hf_model: HFModel,
    directory: str,
    tokenizer=None,
    provenance: Optional[dict] = None,
    overwrite: bool = False,
    dtype: str = "float32",
) -> str:
    """Write ``hf_model`` (and ``tokenizer``, a FastTokenizer, when given) into ``directory``.

    Args:
        provenance: recorded under ``"megatron_evomoe"`` in config.json (checkpoint, iteration,
            router, routing state).
        overwrite: replace an existing ``directory`` (otherwise InputError).
        dtype: of the floating-point weights (a key of :data:`DTYPES`); gates compute in fp32 anyway.
    """
    directory = os.path.abspath(directory)
    if os.path.exists(directory) and not overwrite:
        raise InputError(f"--output-dir {directory} exists (pass --overwrite to replace it)")
    tmp = directory + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    token_ids = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    if tokenizer is not None:
        token_ids = write_tokenizer_files(tokenizer, tmp, hf_model.config["max_position_embeddings"])
    config = {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "auto_map": {
            "AutoConfig": f"{MODELING_FILE[:-3]}.EvoMoEGPTConfig",
            "AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.{ARCHITECTURE}",
        },
        **hf_model.config,
        **token_ids,
        "tie_word_embeddings": False,  # the output layer reads the input embedding directly
        "dtype": dtype,
        "megatron_evomoe": provenance or {},
    }
    with open(os.path.join(tmp, "config.json"), "w") as handle:
        json.dump(config, handle, indent=1)
    generation = {"bos_token_id": token_ids["bos_token_id"], "eos_token_id": token_ids["eos_token_id"],
                  "use_cache": False}
    with open(os.path.join(tmp, "generation_config.json"), "w") as handle:
        json.dump(generation, handle, indent=1)
    tensors = {name: t.to(DTYPES[dtype]) if t.is_floating_point() else t for name, t in hf_model.tensors.items()}
    _save_safetensors(tensors, os.path.join(tmp, "model.safetensors"), {"format": "pt"})
    shutil.copyfile(os.path.join(os.path.dirname(__file__), MODELING_FILE), os.path.join(tmp, MODELING_FILE))
    if os.path.exists(directory):
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory
