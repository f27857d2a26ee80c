"""Per-process bodies of the end-to-end test (importable by spawned ranks)."""

from __future__ import annotations

import importlib.util
import os

import torch

from megatron_evomoe.training.checkpointing import unwrap_model
from megatron_evomoe.training.finetune_entry import main as finetune_main
from tests.bert.toy_data import toy_rows
from tests.data.conftest import REPO_ROOT
from tests.glue.tsv_fixtures import write_task


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_ROOT, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pretrain(argv: list[str]) -> dict:
    """Run pretrain_bert_moe.py; return this rank's shard of the word embedding."""
    torch.set_num_threads(1)  # two ranks share the test machine's cores
    session = _script("pretrain_bert_moe").cli(argv)
    model = unwrap_model(session.model[0])
    return {"embedding": model.embedding.word_embeddings.weight.detach().clone()}


def write_toy_glue(root: str) -> dict:
    """Learnable toy SST-2, MNLI and RTE directories in the official layouts."""
    dirs = {}
    for task, (train, dev, test) in {"SST-2": (192, 64, 24), "MNLI": (32, 16, 10), "RTE": (32, 16, 10)}.items():
        dirs[task] = write_task(
            task, os.path.join(root, task), toy_rows(task, train, 1), toy_rows(task, dev, 2),
            toy_rows(task, test, 3, labeled=False), dev_mm=toy_rows(task, dev, 4),
            test_mm=toy_rows(task, test, 5, labeled=False),
            test_first_id=100,
        )
    return dirs


def finetune_chain(checkpoint: str, work: str) -> dict:
    """SST-2 from the pretrained checkpoint (with test predictions); MNLI -> RTE from the MNLI
    model, as the paper does; then prediction only, from the fine-tuned RTE checkpoint."""
    dirs = write_toy_glue(os.path.join(work, "glue"))
    common = ["--micro-batch-size", "16", "--log-interval", "1000", "--seed", "3"]
    sst2 = finetune_main([
        "--task", "SST-2", "--data-dir", dirs["SST-2"], "--pretrained-checkpoint", checkpoint, "--epochs", "2",
        "--lr", "2e-3", "--micro-batch-size", "8", "--seq-length", "16", "--results-json",
        os.path.join(work, "sst2.json"), "--predict", "--predict-dir", os.path.join(work, "pred"), *common[2:],
    ])
    mnli = finetune_main([
        "--task", "MNLI", "--data-dir", dirs["MNLI"], "--pretrained-checkpoint", checkpoint, "--epochs", "1",
        "--save", os.path.join(work, "ft-mnli"), "--predict", "--predict-dir", os.path.join(work, "pred"), *common,
    ])
    rte = finetune_main([
        "--task", "RTE", "--data-dir", dirs["RTE"], "--pretrained-checkpoint", os.path.join(work, "ft-mnli"),
        "--epochs", "1", "--save", os.path.join(work, "ft-rte"), "--results-json", os.path.join(work, "rte.json"),
        "--predict", "--predict-dir", os.path.join(work, "pred-rte"), *common,
    ])
    again = finetune_main([
        "--task", "RTE", "--data-dir", dirs["RTE"], "--load", os.path.join(work, "ft-rte"), "--epochs", "0",
        "--predict", "--predict-dir", os.path.join(work, "pred-again"), *common,
    ])
    return {name: {"history": r.history, "best": r.best, "files": r.submission_files, "model": r.model_name}
            for name, r in (("SST-2", sst2), ("MNLI", mnli), ("RTE", rte), ("RTE-predict", again))}
