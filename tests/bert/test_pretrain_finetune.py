"""End to end: BERT-MoE pretraining at TP=2 (two gloo ranks), then GLUE fine-tuning at TP=1 from
that checkpoint: toy SST-2 above chance, predictions in the leaderboard format, MNLI -> RTE, and
prediction from a fine-tuned checkpoint."""

import json

import pytest
import torch

from megatron_evomoe.arguments import build_parser, parse_args
from megatron_evomoe.bert_arguments import add_bert_args
from megatron_evomoe.data.glue.results import read_results
from megatron_evomoe.models.bert_classifier import build_bert_classifier
from megatron_evomoe.run_config import build_run_config
from megatron_evomoe.training.finetune import load_encoder
from megatron_evomoe.training.model_args import flag_defaults, read_model_args
from tests.bert.e2e_ranks import finetune_chain, pretrain
from tests.bert.toy_data import build_toy_bert_data
from tests.distributed import run_ranks

pytestmark = pytest.mark.slow

MODEL = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--ffn-hidden-size", "64",
         "--seq-length", "32", "--num-experts", "4", "--moe-router-type", "dts", "--hidden-dropout", "0",
         "--attention-dropout", "0", "--make-vocab-size-divisible-by", "8", "--bert-no-binary-head"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A TP=2 + sequence-parallel EvoMoE checkpoint of 16 steps (Top-1 from step 8)."""
    work = tmp_path_factory.mktemp("bert_e2e")
    toy = build_toy_bert_data(str(work))
    argv = [*toy["tokenizer_flags"], "--data-path", toy["prefix"], "--split", "90,10,0", *MODEL,
            "--micro-batch-size", "8", "--global-batch-size", "16", "--train-iters", "8", "--lr", "2e-3",
            "--evomoe-shared-expert-iters", "2", "--dts-anneal-iters", "3", "--log-interval", "2",
            "--eval-interval", "4", "--eval-iters", "1", "--tensor-model-parallel-size", "2", "--sequence-parallel",
            "--save", str(work / "ckpt"), "--log-json", str(work / "log.jsonl")]
    ranks = run_ranks(pretrain, 2, argv)
    # TP shards the vocabulary rows: the full embedding is rank 0's rows, then rank 1's.
    embedding = torch.cat([r["embedding"] for r in ranks])
    return {"work": work, "checkpoint": str(work / "ckpt"), "embedding": embedding, "toy": toy}


@pytest.fixture(scope="module")
def chain(pretrained):
    return run_ranks(finetune_chain, 1, pretrained["checkpoint"], str(pretrained["work"]))[0]


def test_pretraining_logs_mlm_loss_accuracy_and_validation(pretrained):
    records = [json.loads(line) for line in open(pretrained["work"] / "log.jsonl")]
    trained = [r for r in records if "lm_loss" in r]
    assert [r["iteration"] for r in trained] == [2, 4, 6, 8]
    assert all(0.0 <= r["mlm_accuracy"] <= 1.0 for r in trained)
    assert trained[-1]["lm_loss"] < trained[0]["lm_loss"]
    validated = [r for r in records if "val_loss" in r]
    assert len(validated) == 2 and all({"val_ppl", "val_mlm_accuracy"} <= set(r) for r in validated)
    assert trained[-1]["phase"] == "top1"
    record = read_model_args(pretrained["checkpoint"])
    assert record["flags"]["num_experts"] == 4 and record["padded_vocab_size"] % 2 == 0


def test_tp2_checkpoint_loads_into_tp1_classifier(pretrained, megatron_world_of_one):
    record = read_model_args(pretrained["checkpoint"])
    defaults = flag_defaults(record, build_parser("", add_bert_args))  # the model flags, as finetune_glue.py does
    run = build_run_config(parse_args(["--seed", "9", "--micro-batch-size", "4", "--train-iters", "1", "--lr", "1e-3"], "",
                                      add_bert_args, defaults), record["padded_vocab_size"], 1)
    model = build_bert_classifier(run.model, num_outputs=2)
    head_before = model.classification_head.projection.weight.detach().clone()
    assert not torch.equal(model.embedding.word_embeddings.weight, pretrained["embedding"])
    load_encoder([model], run, pretrained["checkpoint"])
    torch.testing.assert_close(model.embedding.word_embeddings.weight, pretrained["embedding"], rtol=0, atol=0)
    assert torch.equal(model.classification_head.projection.weight, head_before)  # the head stays new


def test_binary_head_is_recorded_and_a_mismatch_names_the_flag(pretrained):
    from megatron_evomoe.training.checkpointing import CheckpointError, check_run_meta, checkpoint_dir, read_tracker

    root = pretrained["checkpoint"]
    ckpt = checkpoint_dir(root, read_tracker(root))
    assert json.load(open(f"{ckpt}/run_meta.json"))["bert_binary_head"] is False
    with pytest.raises(CheckpointError, match="saved with --bert-binary-head False, this run has True"):
        check_run_meta(ckpt, {"bert_binary_head": True}, ["bert_binary_head"])


def test_finetuning_beats_chance_and_writes_results(pretrained, chain):
    sst2 = chain["SST-2"]
    assert sst2["best"]["accuracy"] >= 0.8, sst2["history"]  # chance: 0.5
    results = read_results(str(pretrained["work"] / "sst2.json"))
    assert results["task"] == "SST-2" and results["model"] == "ckpt" and results["metric"] == "accuracy"
    assert results["score"] == results["accuracy"] == sst2["best"]["accuracy"] and results["epoch"] in (1, 2)
    assert results["flags"]["lr"] == 2e-3 and len(results["history"]) == 2
    lines = open(pretrained["work"] / "pred" / "SST-2.tsv").read().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 25
    assert [line.split("\t")[0] for line in lines[1:]] == [str(100 + i) for i in range(24)]
    assert {line.split("\t")[1] for line in lines[1:]} <= {"0", "1"}


def test_mnli_then_rte_from_the_mnli_model_then_predict_only(pretrained, chain):
    assert set(chain["MNLI"]["best"]) == {"epoch", "accuracy", "accuracy_mm"}
    for name, first_id in (("MNLI-m.tsv", 100), ("MNLI-mm.tsv", 1100)):
        lines = open(pretrained["work"] / "pred" / name).read().splitlines()
        assert lines[1].split("\t")[0] == str(first_id) and len(lines) == 11
        assert {line.split("\t")[1] for line in lines[1:]} <= {"entailment", "neutral", "contradiction"}
    rte = chain["RTE"]
    assert rte["model"] == "ckpt"  # RTE from MNLI is still the pretrained model's row
    assert read_results(str(pretrained["work"] / "rte.json"))["task"] == "RTE"
    # predicting with the saved RTE model reproduces the run's best dev score and test predictions
    assert chain["RTE-predict"]["best"]["accuracy"] == rte["best"]["accuracy"]
    assert open(pretrained["work"] / "pred-rte" / "RTE.tsv").read() == open(
        pretrained["work"] / "pred-again" / "RTE.tsv").read()
