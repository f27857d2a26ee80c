"""tools/export_hf.py: the exported Hugging Face model computes what ours computes.

Oracle: our own trained model (the training session's, not reloaded) in its final routing state,
run through megatron's GPTModel forward. The exported directory is loaded by transformers alone
(``AutoModelForCausalLM`` with ``trust_remote_code``), on real text tokenized by the run's tokenizer.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from megatron_evomoe.data.tokenizer import build_tokenizer
from megatron_evomoe.export.hf_convert import convert_gpt
from megatron_evomoe.export.hf_writer import write_hf_directory, write_tokenizer_files
from megatron_evomoe.models.gpt import build_gpt_model
from megatron_evomoe.moe.evolution import PhaseController
from megatron_evomoe.training.checkpointing import unwrap_model
from tests.export.hf_fixtures import PROMPT, TEXT, train_checkpoint, train_tokenizer
from tests.tiny import tiny_run
from tools.export_hf import main as export_main

MISSING = [name for name in ("transformers", "safetensors") if importlib.util.find_spec(name) is None]
# Checked without importing transformers, so that collecting the suite does not pay for its import.
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"the [hf] extra is not installed ({', '.join(MISSING)}): pip install -e '.[hf]'"
)
NEW_TOKENS = 20


@pytest.fixture(scope="module")
def auto_model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


@pytest.fixture(scope="module")
def auto_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer


def _our_logits(model, ids: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    with torch.no_grad():
        return model(ids, positions, None, padding_mask=ids).float()


def _our_greedy(model, ids: torch.Tensor, eos: int) -> torch.Tensor:
    """Greedy decoding with our model: the whole sequence again at every step, stop after EOS."""
    for _ in range(NEW_TOKENS):
        next_id = _our_logits(model, ids)[:, -1].argmax(dim=-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
        if int(next_id) == eos:
            break
    return ids


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return train_tokenizer(str(tmp_path_factory.mktemp("tokenizer")))


@pytest.mark.parametrize(
    "name, flags, phase, load",
    [
        # EvoMoE past T_D: stage 1 (step 0), diversify, DTS (step 1), Top-1 (steps 2-3) at the final tau.
        ("evomoe", ["--moe-router-type", "dts", "--evomoe-shared-expert-iters", "1", "--dts-anneal-iters", "1",
                    "--dts-top1-iter", "2"], "top1", "ckpt"),
        ("gshard", ["--moe-router-type", "gshard", "--train-iters", "2"], "sparse", "ckpt/iter_0000002"),
    ],
)
def test_exported_model_matches_the_trained_model(
    name, flags, phase, load, tokenizer_path, tmp_path, megatron_world_of_one, auto_model, auto_tokenizer
):
    session = train_checkpoint(str(tmp_path / "ckpt"), tokenizer_path, *flags)
    ours = unwrap_model(session.model[0])
    ours.eval()
    assert session.controller.applied_state.phase == phase

    directory = export_main(["--load", str(tmp_path / load), "--output-dir", str(tmp_path / f"hf_{name}")])
    theirs = auto_model.from_pretrained(directory, trust_remote_code=True)
    hf_tokenizer = auto_tokenizer.from_pretrained(directory, trust_remote_code=True)

    our_tokenizer = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=tokenizer_path)
    ids = our_tokenizer.tokenize(PROMPT)
    assert hf_tokenizer(PROMPT)["input_ids"] == ids and our_tokenizer.unk not in ids
    ids = torch.tensor([ids])
    assert torch.allclose(theirs(ids).logits, _our_logits(ours, ids), rtol=0, atol=1e-5)

    # Left-padded next to a longer prompt, the prompt's logits stay the same.
    longer = torch.cat([ids, ids], dim=1)
    padded = torch.cat([torch.full_like(ids, our_tokenizer.eod), ids], dim=1)
    mask = torch.cat([torch.zeros_like(ids), torch.ones_like(ids)], dim=1)
    batch = theirs(torch.cat([padded, longer]), attention_mask=torch.cat([mask, torch.ones_like(mask)])).logits
    assert torch.allclose(batch[0, ids.shape[1]:], _our_logits(ours, ids)[0], rtol=0, atol=1e-5)
    assert torch.allclose(batch[1], _our_logits(ours, longer)[0], rtol=0, atol=1e-5)

    eos = our_tokenizer.eod
    assert theirs.generation_config.eos_token_id == eos
    generated = theirs.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
    expected = _our_greedy(ours, ids, eos)
    assert generated.tolist() == expected.tolist()


# DTS in each phase: stage 1 (exported as the shared FFN), the dense DTS mixture, Top-1.
ROUTER_STATES = [
    ("dts", 0), ("dts", 1), ("dts", None), ("switch", None), ("gshard", None), ("base", None),
    ("hash", None), ("stablemoe", None), ("stablemoe", 0), ("dselectk", None),
]


@pytest.mark.parametrize("router, iteration", ROUTER_STATES)
def test_every_router_state_exports(router, iteration, tmp_path, megatron_world_of_one, auto_model):
    """An untrained model of each router in a routing state (None: the final one), written by the
    exporter's converter and writer and loaded by transformers, gives our logits."""
    run = tiny_run("--moe-router-type", router, "--max-position-embeddings", "64", "--train-iters", "40",
                   "--evomoe-shared-expert-iters", "1", "--dts-anneal-iters", "30")
    options = run.model.moe_router
    state = options.final_state(40) if iteration is None else options.routing_state(iteration)
    model = build_gpt_model(run.model)
    PhaseController(run.model).apply_state([model], state)
    model.eval()
    directory = write_hf_directory(convert_gpt(model, run.model, state), str(tmp_path / f"{router}_{iteration}"))
    theirs = auto_model.from_pretrained(directory, trust_remote_code=True)
    ids = torch.randint(0, run.model.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(theirs(ids).logits, _our_logits(model, ids), rtol=0, atol=1e-5)


def test_a_gpt2_bpe_tokenizer_exports_as_itself(tmp_path, auto_tokenizer):
    """Megatron's GPT2BPETokenizer files (vocab.json + merges.txt), written as tokenizer.json: the
    same ids and text back. One documented difference: a literal ``<|endoftext|>`` in the text is the
    EOS token for the exported tokenizer (as for Hugging Face's GPT-2), text for Megatron's."""
    from tokenizers import ByteLevelBPETokenizer

    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator([TEXT], vocab_size=300, special_tokens=["<|endoftext|>"])
    trainer.save_model(str(tmp_path))
    ours = build_tokenizer("GPT2BPETokenizer", str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    ids = write_tokenizer_files(ours, str(tmp_path), max_length=64)
    assert ids == {"bos_token_id": ours.eod, "eos_token_id": ours.eod, "pad_token_id": None}
    theirs = auto_tokenizer.from_pretrained(str(tmp_path))
    text = "The quick brown fox, jumps!  Über\n\tthe gate  "
    assert theirs(text)["input_ids"] == ours.tokenize(text)
    assert theirs.decode(ours.tokenize(text)) == text
    assert theirs.eos_token_id == ours.eod and theirs("<|endoftext|>")["input_ids"] == [ours.eod]
