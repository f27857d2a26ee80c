"""Every launch script in dry-run mode: the full (paper-sized, multi-GPU) config validates on this CPU
machine and the report states sizes, batch arithmetic and memory."""

import json
import os

import pytest

from tests.examples.conftest import run_example

DRY = {"DRY_RUN": "1"}


def _ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_preprocessing_prints_its_commands(corpus_data, tmp_path):
    out = _ok(run_example("preprocess_corpus.sh", INPUT=corpus_data["corpus"], OUTPUT_DIR=tmp_path, **DRY))
    assert out.count("+ ") == 3 and "train_tokenizer.py" in out and "--split-sentences" in out
    assert not os.listdir(tmp_path)  # nothing ran
    missing = run_example("preprocess_corpus.sh", INPUT=str(tmp_path / "none.jsonl"), **DRY)
    assert missing.returncode == 2 and "no input matches" in missing.stderr


GPT_CASES = [
    # script, extra env, expected lines
    ("gpt_moe_paper_1node.sh", {}, ["world size 8 (TP 1 x PP 1 x DP 8; EP 8", "global 256 = micro 8 x DP 8 x 4"]),
    ("gpt_moe_paper_multinode.sh", {}, ["world size 16 (TP 1 x PP 1 x DP 16; EP 16",  # default NNODES=2
                                                   "global 256 = micro 8 x DP 16 x 2"]),
    ("gpt_moe_paper.sbatch", {}, ["world size 32 (TP 1 x PP 1 x DP 32; EP 16", "global 256 = micro 8 x DP 32 x 1"]),
]


@pytest.mark.parametrize("script,env,expected", GPT_CASES, ids=[c[0] for c in GPT_CASES])
def test_gpt_paper_configs(script, env, expected, corpus_data, tmp_path):
    out = _ok(run_example(script, CKPT_DIR=tmp_path / "ckpt", VOCAB_FILE=corpus_data["VOCAB_FILE"],
                          MERGE_FILE=corpus_data["MERGE_FILE"], DATA_PATH=corpus_data["DATA_PATH"], **env, **DRY))
    for line in expected + ["model: 24 layers (12 MoE, 16 experts each, router dts", "routed experts 1.611B",
                            "active per token", "per-GPU memory estimate", "nothing was trained"]:
        assert line in out
    assert not (tmp_path / "ckpt").exists()


def test_a_dry_run_names_missing_data(corpus_data, tmp_path):
    missing = tmp_path / "none_text_document"
    result = run_example("gpt_moe_paper_1node.sh", CKPT_DIR=tmp_path / "ckpt", VOCAB_FILE=corpus_data["VOCAB_FILE"],
                         MERGE_FILE=corpus_data["MERGE_FILE"], DATA_PATH=missing, **DRY)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: data prefix '{missing}' (--data-path): missing {missing}.bin"


@pytest.fixture(scope="module")
def bert_dry_run(corpus_data, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("bert") / "roberta-moe"
    result = run_example("bert_moe_pretrain.sh", CKPT_DIR=ckpt, VOCAB_FILE=corpus_data["VOCAB_FILE"],
                         MERGE_FILE=corpus_data["MERGE_FILE"], DATA_PATH=corpus_data["DATA_PATH"], **DRY)
    return result, ckpt


def test_bert_pretraining(bert_dry_run):
    result, ckpt = bert_dry_run
    out = _ok(result)
    assert "dry run of bert-moe: configuration valid for world size 8" in out
    assert "global 256 = micro 4 x DP 8 x 8 micro-batches" in out and "seq 512" in out
    flags = json.load(open(ckpt / "model_args.json"))["flags"]  # what fine-tuning reads
    assert flags["num_layers"] == 24 and flags["bert_binary_head"] is False  # RoBERTa, the paper's


def test_glue_finetuning(bert_dry_run, corpus_data, tmp_path):
    _, ckpt = bert_dry_run
    rte = tmp_path / "glue" / "RTE"
    rte.mkdir(parents=True)
    rows = "index\tsentence1\tsentence2\tlabel\n0\tA cat sat.\tA cat sits.\tentailment\n1\tDogs bark.\tCats fly.\tnot_entailment\n"
    (rte / "train.tsv").write_text(rows)
    (rte / "dev.tsv").write_text(rows)
    (rte / "test.tsv").write_text("index\tsentence1\tsentence2\n0\tA cat sat.\tA cat sits.\n")
    out = _ok(run_example("glue_finetune.sh", TASK="RTE", GLUE_DIR=tmp_path / "glue", PRETRAINED=ckpt, MICRO_BATCH=2,
                          OUT=tmp_path / "out", RESULTS_DIR=tmp_path / "results", PREDICT_DIR=tmp_path / "pred",
                          VOCAB_FILE=corpus_data["VOCAB_FILE"], MERGE_FILE=corpus_data["MERGE_FILE"], **DRY))
    assert "dry run of glue-RTE: configuration valid for world size 1" in out
    assert "model: 24 layers" in out  # the pretrained model's flags, from its model_args.json
    assert "DTS dense start" not in out  # fine-tuning routes with the final Top-1 gate
