"""Megatron-LM can read our checkpoints: common.pt has its ``args``, ``iteration``,
``checkpoint_version`` and ``num_floating_point_operations_so_far``, and megatron-core's own GPTModel
(local spec), built from those ``args`` alone, loads a dense run's weights with ``dist_checkpointing``.

What differs from Megatron-LM's own model is not in the checkpoint: our core attention is torch SDPA
(megatron: DotProductAttention; neither has weights) and our LayerNorm class supports sequence
parallelism (same ``weight``/``bias``). Both specs map the layernorms to Transformer Engine's key
names (``self_attention.linear_qkv.layer_norm_weight``, ``mlp.linear_fc1.layer_norm_weight``), so every
key is the same.
"""

import argparse

import pytest
import torch
import torch.nn.functional as F
from megatron.core import dist_checkpointing
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_evomoe.arguments import parse_args
from megatron_evomoe.run_config import build_run_config
from megatron_evomoe.training.checkpointing import checkpoint_dir
from megatron_evomoe.training.loop import pretrain
from tests.tiny import VOCAB, tiny_gpt_task

DENSE = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--ffn-hidden-size", "48",
         "--seq-length", "16", "--micro-batch-size", "2", "--global-batch-size", "4", "--train-iters", "4",
         "--lr", "1e-2", "--hidden-dropout", "0", "--attention-dropout", "0", "--log-interval", "1",
         "--eval-interval", "1000", "--seed", "3"]


def megatron_gpt_from_args(args: argparse.Namespace) -> GPTModel:
    """megatron-core's GPTModel with its local spec, configured from Megatron-LM-named ``args`` only."""
    config = TransformerConfig(
        num_layers=args.num_layers,
        hidden_size=args.hidden_size,
        ffn_hidden_size=args.ffn_hidden_size,
        num_attention_heads=args.num_attention_heads,
        kv_channels=args.kv_channels,
        num_query_groups=args.num_query_groups,
        add_bias_linear=args.add_bias_linear,
        add_qkv_bias=args.add_qkv_bias,
        normalization=args.normalization,
        layernorm_epsilon=args.norm_epsilon,
        activation_func=F.gelu,
        gated_linear_unit=args.swiglu,
        hidden_dropout=args.hidden_dropout,
        attention_dropout=args.attention_dropout,
        params_dtype=args.params_dtype,
        use_cpu_initialization=True,
    )
    return GPTModel(
        config=config,
        transformer_layer_spec=get_gpt_layer_local_spec(normalization=args.normalization),
        vocab_size=args.padded_vocab_size,
        max_sequence_length=args.max_position_embeddings,
        share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
        position_embedding_type=args.position_embedding_type,
    )


def test_megatron_core_gpt_loads_a_dense_run(tmp_path, megatron_world_of_one):
    ckpt = str(tmp_path / "ckpt")
    run = build_run_config(parse_args(DENSE + ["--save", ckpt, "--exit-interval", "2"]), VOCAB, 1)
    ours = pretrain(run, tiny_gpt_task())
    common = dist_checkpointing.load_common_state_dict(checkpoint_dir(ckpt, 2))
    # Megatron-LM's meanings: iteration reached, version 3.0, FLOPs so far, args under its names.
    assert (common["iteration"], common["checkpoint_version"]) == (2, 3.0)
    assert common["num_floating_point_operations_so_far"] == ours.state.floating_point_operations > 0
    args = common["args"]
    assert isinstance(args, argparse.Namespace)
    assert (args.num_layers, args.hidden_size, args.ffn_hidden_size, args.num_attention_heads) == (2, 32, 48, 4)
    assert (args.padded_vocab_size, args.max_position_embeddings, args.seq_length) == (VOCAB, 16, 16)
    assert (args.iteration, args.consumed_train_samples, args.tensor_model_parallel_size) == (2, 8, 1)
    assert args.num_experts is None

    megatron_model = megatron_gpt_from_args(args)
    # As Megatron-LM's loader: the content metadata says how tensors are keyed; the model is "model".
    metadata = dist_checkpointing.load_content_metadata(checkpoint_dir(ckpt, 2))
    template = {"model": megatron_model.sharded_state_dict(metadata=metadata)}
    megatron_model.load_state_dict(dist_checkpointing.load(template, checkpoint_dir(ckpt, 2))["model"], strict=True)
    ours_model = ours.model[0].module
    theirs = dict(megatron_model.named_parameters())
    assert sorted(theirs) == sorted(name for name, _ in ours_model.named_parameters())
    for name, param in ours_model.named_parameters():
        assert torch.equal(theirs[name], param), name

