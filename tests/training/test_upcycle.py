"""tools/upcycle_checkpoint.py: a dense checkpoint becomes an MoE checkpoint that training resumes from.

Oracles: the dense run itself (with copied experts and DTS at threshold 0 the kept gate weights sum
to 1, so the upcycled model computes the dense model's function: its first step's loss is the dense
run's loss at that step, on one process and on EP2); the diversify step itself, run again on the
upcycled model (it must change nothing); masks recomputed by hand from ``expert_masks``; and
megatron-core's own GPTModel as the writer of a Megatron-LM-layout checkpoint.
"""

import argparse
import json
import os

import pytest
import torch
from megatron.core import dist_checkpointing
from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler

from megatron_evomoe.arguments import parse_args
from megatron_evomoe.errors import InputError
from megatron_evomoe.moe.diversify import expert_masks, expert_weights
from megatron_evomoe.moe.evolution import moe_layers
from megatron_evomoe.moe.routers.dts import DTSRouter
from megatron_evomoe.run_config import build_run_config
from megatron_evomoe.training.checkpointing import checkpoint_dir, unwrap_model, write_tracker
from megatron_evomoe.training.loop import advance_phase, pretrain, setup_session
from megatron_evomoe.training.optimizer import inner_optimizers
from megatron_evomoe.training.optimizer_checkpoint import adam_step
from megatron_evomoe.training.optimizer_state import apply_parameter_updates, optimizer_copy
from megatron_evomoe.training.upcycle import build_parser, main, upcycle
from tests.distributed import run_ranks
from tests.tiny import VOCAB, tiny_args, tiny_gpt_task, tiny_run
from tests.training.checkpoint_ranks import train
from tests.training.test_megatron_lm_checkpoint import megatron_gpt_from_args

SEED = 7  # tiny_args' --seed: the dense run's, which the masks take by default
RESUME_DTS = ["--moe-router-type", "dts", "--evomoe-shared-expert-iters", "2", "--train-iters", "3"]


def dense_args(*extra: str) -> list:
    """tiny_args without experts (4 layers, hidden 32, FFN 64)."""
    flags = tiny_args(*extra)
    i = flags.index("--num-experts")
    return flags[:i] + flags[i + 2:]


def _records(path: str) -> dict:
    return {r["iteration"]: r for r in map(json.loads, open(path)) if "lm_loss" in r}


@pytest.fixture(scope="module")
def dense(tmp_path_factory, megatron_world_of_one):
    """A dense run of 3 iterations, checkpointed at 2 and 3; (checkpoint root, its log records)."""
    root = tmp_path_factory.mktemp("dense")
    ckpt, log = str(root / "ckpt"), str(root / "log.jsonl")
    flags = dense_args("--train-iters", "3", "--save", ckpt, "--save-interval", "2", "--log-json", log)
    pretrain(build_run_config(parse_args(flags), VOCAB, 1), tiny_gpt_task())
    yield ckpt, _records(log)
    MoEAuxLossAutoScaler.main_loss_backward_scale = None


def _upcycle(*flags: str):
    return upcycle(build_parser().parse_args(list(flags)))


@pytest.fixture(scope="module")
def copied(dense, tmp_path_factory):
    """The dense checkpoint of step 2 upcycled with --method copy under DTS (default router)."""
    moe = str(tmp_path_factory.mktemp("copied") / "moe")
    result = _upcycle("--load", dense[0], "--ckpt-step", "2", "--save", moe, "--num-experts", "4", "--method", "copy")
    assert result.iteration == 2 and result.resume_flags[-2:] == ["--evomoe-shared-expert-iters", "2"]
    return moe


def test_copied_experts_resume_with_the_dense_loss_on_one_process_and_ep2(dense, copied, tmp_path):
    _, dense_records = dense
    moe = copied
    flags = [*RESUME_DTS, "--dts-threshold", "0", "--load", moe]
    single, ep2 = str(tmp_path / "single.jsonl"), str(tmp_path / "ep2.jsonl")
    pretrain(tiny_run(*flags, "--log-json", single), tiny_gpt_task())
    run_ranks(train, 2, flags + ["--expert-model-parallel-size", "2", "--log-json", ep2])
    for log in (single, ep2):
        record = _records(log)[3]  # the first step after the upcycled checkpoint (step 2)
        assert (record["phase"], record["temperature"]) == ("gate_sparsify", 2.0)  # DTS from tau max
        assert record["lm_loss"] == pytest.approx(dense_records[3]["lm_loss"], rel=1e-5)


def test_a_distributed_optimizer_run_upcycles_and_resumes_with_the_dense_loss(tmp_path, megatron_world_of_one):
    """fp32 with --use-distributed-optimizer: its master weights must be in the upcycled checkpoint."""
    dense_ckpt, moe, log = str(tmp_path / "dense"), str(tmp_path / "moe"), str(tmp_path / "log.jsonl")
    flags = ["--train-iters", "2", "--use-distributed-optimizer"]
    pretrain(build_run_config(parse_args(dense_args(*flags, "--save", dense_ckpt, "--save-interval", "1",
                                                    "--log-json", log)), VOCAB, 1), tiny_gpt_task())
    _upcycle("--load", dense_ckpt, "--ckpt-step", "1", "--save", moe, "--num-experts", "4", "--method", "copy")
    resumed = str(tmp_path / "resumed.jsonl")
    pretrain(tiny_run(*flags, "--moe-router-type", "dts", "--evomoe-shared-expert-iters", "1", "--dts-threshold", "0",
                      "--load", moe, "--log-json", resumed), tiny_gpt_task())
    assert _records(resumed)[2]["lm_loss"] == pytest.approx(_records(log)[2]["lm_loss"], rel=1e-5)


def test_copied_experts_give_the_dense_logits(dense, copied):
    """The first forward pass of training (after the loop's own first phase step) is the dense model's."""
    ckpt, moe = dense[0], copied
    tokens = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(16).expand(2, 16)
    logits = []
    for run in (build_run_config(parse_args(dense_args("--train-iters", "3", "--load", ckpt, "--ckpt-step", "2")), VOCAB, 1),
                tiny_run(*RESUME_DTS, "--dts-threshold", "0", "--load", moe)):
        session = setup_session(run, tiny_gpt_task())
        events = advance_phase(session, session.state.iteration)
        # No second diversify at T_S: the checkpoint's experts were spawned there.
        assert not any("expert-diversify" in event for event in events)
        model = unwrap_model(session.model[0]).eval()
        with torch.no_grad():
            logits.append(model(tokens, positions, None, padding_mask=tokens))
    assert torch.allclose(logits[1], logits[0], rtol=0, atol=1e-5)


def test_evomoe_experts_equal_those_of_the_diversify_step(dense, tmp_path):
    ckpt, _ = dense
    moe = str(tmp_path / "moe")
    result = _upcycle("--load", ckpt, "--ckpt-step", "2", "--save", moe, "--num-experts", "4", "--reset-iteration")
    assert result.resume_flags[-2:] == ["--evomoe-shared-expert-iters", "0"]
    dense_session = setup_session(build_run_config(parse_args(dense_args("--train-iters", "3", "--load", ckpt, "--ckpt-step", "2")), VOCAB, 1),
                                  tiny_gpt_task())
    dense_params = dict(unwrap_model(dense_session.model[0]).named_parameters())
    reset = ["--moe-router-type", "dts", "--train-iters", "3"]
    session = setup_session(tiny_run(*reset, "--evomoe-shared-expert-iters", "0", "--load", moe), tiny_gpt_task())
    # --reset-iteration: iteration and LR schedule restart; Adam's step stays with its moments.
    assert (session.state.iteration, session.state.consumed_samples, session.scheduler.num_steps) == (0, 0, 0)
    assert adam_step(inner_optimizers(session.optimizer)) == adam_step(inner_optimizers(dense_session.optimizer)) == 2
    options = session.run.model.moe_router
    spawned = {}
    for layer in moe_layers(session.model):
        ffn = [dense_params[f"decoder.layers.{layer.layer_number - 1}.mlp.linear_fc{i}.weight"] for i in (1, 2)]
        assert torch.equal(layer.shared_expert.linear_fc1.weight, ffn[0])
        for local, index in enumerate(layer.local_expert_indices):
            masks = expert_masks(64, 32, options, SEED, layer.layer_number, index)
            for weight, source, mask in zip(expert_weights(layer.experts, local), ffn, masks):
                assert torch.equal(weight, source * mask)  # hand oracle: the dense FFN under the expert's mask
                moments = optimizer_copy(dense_session.optimizer, source).state["exp_avg"]
                assert moments.abs().sum() > 0
                assert torch.equal(optimizer_copy(session.optimizer, weight).state["exp_avg"], moments * mask)
                spawned[weight] = (weight.detach().clone(), optimizer_copy(session.optimizer, weight).state["exp_avg"].clone())
        spawned[layer.router.weight] = (layer.router.weight.detach().clone(), None)
    embedding = "embedding.word_embeddings.weight"
    moe_embedding = dict(unwrap_model(session.model[0]).named_parameters())[embedding]
    assert torch.equal(optimizer_copy(session.optimizer, moe_embedding).state["exp_avg_sq"],
                       optimizer_copy(dense_session.optimizer, dense_params[embedding]).state["exp_avg_sq"])
    # The actual diversify step (the training loop's), run again from the shared expert: nothing changes.
    _, updates = session.controller.diversify(session.model)
    apply_parameter_updates(session.optimizer, updates)
    for param, (value, moments) in spawned.items():
        assert torch.equal(param, value)
        if moments is not None:
            assert torch.equal(optimizer_copy(session.optimizer, param).state["exp_avg"], moments)
    with pytest.raises(InputError, match="pass --evomoe-shared-expert-iters 0"):
        setup_session(tiny_run(*reset, "--load", moe), tiny_gpt_task())  # T_S: 5% of 3 iterations = 1


def _megatron_lm_args(**changes) -> argparse.Namespace:
    """Megatron-LM's ``args`` of a dense GPT with tiny_args' architecture."""
    values = dict(
        num_layers=4, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, kv_channels=8, num_query_groups=4,
        add_bias_linear=False, add_qkv_bias=False, normalization="LayerNorm", norm_epsilon=1e-5, swiglu=False,
        hidden_dropout=0.0, attention_dropout=0.0, params_dtype=torch.float32, padded_vocab_size=VOCAB,
        max_position_embeddings=16, seq_length=16, untie_embeddings_and_output_weights=False,
        position_embedding_type="learned_absolute", ckpt_format="torch_dist", seed=5, iteration=6,
        consumed_train_samples=24, global_batch_size=4, train_iters=10, moe_layer_freq=1,
    )
    values.update(changes)
    return argparse.Namespace(**values)


def _write_megatron_lm_checkpoint(root: str, args: argparse.Namespace):
    """As Megatron-LM saves: ``root/iter_0000006`` with the model under "model", ``args`` and ``iteration``
    (a dense model's layers stacked into one tensor per weight, megatron-core's default)."""
    torch.manual_seed(3)
    model = megatron_gpt_from_args(args)
    ckpt_dir = checkpoint_dir(root, args.iteration)
    os.makedirs(ckpt_dir)
    gbs = args.global_batch_size  # Megatron-LM's scheduler counts samples
    schedule = dict(max_lr=1e-2, min_lr=0.0, lr_warmup_steps=0, num_steps=args.consumed_train_samples,
                    lr_decay_steps=args.train_iters * gbs, lr_decay_style="linear", start_wd=0.01, end_wd=0.01,
                    wd_incr_steps=args.train_iters * gbs, wd_incr_style="constant")
    state = {"model": model.sharded_state_dict(), "args": args, "iteration": args.iteration, "checkpoint_version": 3.0,
             "opt_param_scheduler": schedule}
    dist_checkpointing.save(state, ckpt_dir)
    write_tracker(root, args.iteration)
    return model


def test_a_megatron_lm_checkpoint_upcycles_with_evomoe_masks_under_another_router(tmp_path, megatron_world_of_one):
    megatron_ckpt, moe = str(tmp_path / "megatron"), str(tmp_path / "moe")
    theirs = dict(_write_megatron_lm_checkpoint(megatron_ckpt, _megatron_lm_args()).named_parameters())
    iteration_dir = checkpoint_dir(megatron_ckpt, 6)  # --load may name the iteration's directory itself
    result = _upcycle("--load", iteration_dir, "--save", moe, "--num-experts", "4", "--router", "switch")
    assert result.iteration == 6
    session = setup_session(tiny_run("--train-iters", "10", "--load", moe), tiny_gpt_task())  # Switch, MoE layers 0, 2
    # The training position is kept; the LR schedule in iterations: 24 samples / 4 per batch = step 6 of 10.
    assert (session.state.iteration, session.state.consumed_samples, session.scheduler.num_steps) == (6, 24, 6)
    ours = dict(unwrap_model(session.model[0]).named_parameters())
    for name in ("embedding.word_embeddings.weight", "decoder.layers.1.mlp.linear_fc1.weight",
                 "decoder.layers.2.self_attention.linear_qkv.weight", "decoder.final_layernorm.weight"):
        assert torch.equal(ours[name], theirs[name]), name
    options = DTSRouter.Config()  # the default mask options
    for layer in moe_layers(session.model):
        ffn = [theirs[f"decoder.layers.{layer.layer_number - 1}.mlp.linear_fc{i}.weight"] for i in (1, 2)]
        for local, index in enumerate(layer.local_expert_indices):
            masks = expert_masks(64, 32, options, 5, layer.layer_number, index)  # args.seed = 5
            for weight, source, mask in zip(expert_weights(layer.experts, local), ffn, masks):
                assert torch.equal(weight, source * mask)
                assert not optimizer_copy(session.optimizer, weight).state["exp_avg"].any()  # fresh Adam


@pytest.mark.parametrize("case", ["missing", "not dense", "biases"])
def test_bad_input_is_one_line(case, copied, tmp_path, capsys):
    load = {"missing": str(tmp_path / "nowhere"), "not dense": copied, "biases": str(tmp_path / "bias")}[case]
    if case == "biases":  # Megatron-LM's default: linear biases, which this repository's GPT does not have
        _write_megatron_lm_checkpoint(load, _megatron_lm_args(add_bias_linear=True))
    assert main(["--load", load, "--save", str(tmp_path / "out"), "--num-experts", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ")
    expected = {"missing": "no such directory", "not dense": "is not dense (it has --num-experts 4)",
                "biases": "linear biases"}[case]
    assert expected in err
