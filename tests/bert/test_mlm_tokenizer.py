"""MLM special tokens: a BPE vocabulary gets RoBERTa's <s> </s> <mask> <pad> after its last id."""

import os

from megatron_evomoe.data.mlm_tokenizer import MLMTokenizer, missing_roles, with_mlm_special_tokens
from megatron_evomoe.data.tokenizer import build_tokenizer
from megatron_evomoe.data.tokenizer_training import TokenizerTrainingConfig, train_tokenizer
from tests.bert.toy_data import write_corpus


def test_bpe_gets_added_ids_and_wordpiece_is_unchanged(tmp_path):
    corpus = write_corpus(str(tmp_path / "c.jsonl"), 50)
    train_tokenizer(TokenizerTrainingConfig([corpus], str(tmp_path / "bpe"), model_type="bpe", vocab_size=300))
    bpe = build_tokenizer("GPT2BPETokenizer", str(tmp_path / "bpe/vocab.json"), str(tmp_path / "bpe/merges.txt"))
    assert missing_roles(bpe) == ["cls", "sep", "mask", "pad"]
    mlm = with_mlm_special_tokens(bpe)
    assert isinstance(mlm, MLMTokenizer)
    base = bpe.vocab_size
    assert (mlm.cls, mlm.sep, mlm.mask, mlm.pad) == (base, base + 1, base + 2, base + 3)
    assert mlm.vocab_size == base + 4 and mlm.eod == bpe.eod
    text = "The movie was great today."
    ids = mlm.tokenize(text)
    assert ids == bpe.tokenize(text) and max(ids) < base
    assert mlm.detokenize([mlm.cls, *ids, mlm.sep]) == f"<s>{text}</s>"
    assert mlm.inv_vocab[mlm.mask] == "<mask>" and mlm.vocab["<pad>"] == mlm.pad
    assert mlm.unique_identifiers != bpe.unique_identifiers  # dataset caches do not mix

    train_tokenizer(TokenizerTrainingConfig([corpus], str(tmp_path / "wp"), model_type="wordpiece", vocab_size=120))
    wordpiece = build_tokenizer("BertWordPieceCase", os.path.join(tmp_path, "wp/vocab.txt"))
    assert with_mlm_special_tokens(wordpiece) is wordpiece
