"""--data-seed: the data shuffles follow --seed unless it is given (Megatron-LM's behaviour), and with
it fixed, runs of different --seed score the same validation samples."""

import argparse

from megatron_evomoe.data.flags import add_data_args
from megatron_evomoe.data.gpt_dataset import build_gpt_datasets, data_config_from_args

SEQ = 32


def _args(*flags):
    parser = argparse.ArgumentParser()
    add_data_args(parser)
    parser.add_argument("--seq-length", type=int, default=SEQ)
    parser.add_argument("--seed", type=int, default=1234)
    return parser.parse_args(["--data-path", "A", *flags])


def test_the_data_seed_defaults_to_the_seed():
    assert data_config_from_args(_args()).seed == 1234
    assert data_config_from_args(_args("--seed", "7")).seed == 7  # as Megatron-LM: --seed shuffles the data
    assert data_config_from_args(_args("--seed", "7", "--data-seed", "99")).seed == 99


def _valid_tokens(tmp_path, prefix, tokenizer, seed_flags):
    config = data_config_from_args(_args("--split", "80,20,0", "--data-cache-path", str(tmp_path), *seed_flags))
    config.data_path = [prefix]  # the corpus fixture's prefix instead of the placeholder
    _, valid, _ = build_gpt_datasets(config, tokenizer, [16, 8, 0])
    return [valid[i]["tokens"].tolist() for i in range(8)]


def test_a_fixed_data_seed_scores_every_model_seed_on_the_same_validation_samples(tmp_path, gpt_prefixes, bpe_tokenizer):
    prefix = gpt_prefixes[0]
    seed1 = _valid_tokens(tmp_path, prefix, bpe_tokenizer, ["--seed", "1"])
    seed2 = _valid_tokens(tmp_path, prefix, bpe_tokenizer, ["--seed", "2"])
    assert seed1 != seed2  # Megatron-LM's default: the model seed reshuffles the validation samples
    fixed1 = _valid_tokens(tmp_path, prefix, bpe_tokenizer, ["--seed", "1", "--data-seed", "5"])
    fixed2 = _valid_tokens(tmp_path, prefix, bpe_tokenizer, ["--seed", "2", "--data-seed", "5"])
    assert fixed1 == fixed2
