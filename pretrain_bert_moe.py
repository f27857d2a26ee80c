"""Pretrain a BERT/RoBERTa mixture-of-experts masked language model (EvoMoE or a baseline router).

BERT's sentence-pair head is on by default as in Megatron-LM; --bert-no-binary-head gives RoBERTa-style
MLM only (the EvoMoE paper's). 15% of tokens predicted (80% [MASK], 10% random, 10% unchanged), masks redrawn on every pass over
the data. Data from tools/preprocess_data.py (WordPiece or BPE tokenizer of tools/train_tokenizer.py;
--split-sentences so that samples pack whole sentences). Single process (CPU or one GPU)::

    python pretrain_bert_moe.py --bert-no-binary-head --tokenizer-type BertWordPieceLowerCase --vocab-file tok/vocab.txt \
        --data-path data/corpus_text_sentence --split 949,50,1 \
        --num-layers 4 --hidden-size 128 --num-attention-heads 4 --seq-length 128 \
        --num-experts 4 --moe-router-type dts --micro-batch-size 8 --global-batch-size 16 \
        --train-iters 300 --lr 1e-3 --log-interval 10 --eval-interval 100 --save ckpt/bert --save-interval 100

Several processes: ``torchrun --nproc-per-node 8 pretrain_bert_moe.py ... --expert-model-parallel-size 8``.
Fine-tune the result with finetune_glue.py (docs/bert_glue.md). ``--help`` lists every flag by group.
"""

import os
from functools import partial

from megatron_evomoe.arguments import build_parser
from megatron_evomoe.bert_arguments import add_bert_args
from megatron_evomoe.run_config import RunConfig
from megatron_evomoe.training.entry import main
from megatron_evomoe.training.model_args import default_model_name, save_model_args


def forward_step(batch, model):
    """MLM (+ binary-head) outputs on the last stage; the loss function masks and sums them."""
    from megatron_evomoe.models.bert import bert_forward, mlm_loss

    output = bert_forward(model, batch)
    return output, partial(mlm_loss, loss_mask=batch["loss_mask"], sentence_labels=batch["is_random"])


def make_task(run: RunConfig, tokenizer):
    """BERT providers: model for this pipeline stage, megatron.core masked BERT datasets, forward step.

    Also records the model flags beside the checkpoints (``model_args.json``) for fine-tuning.
    megatron-core is imported here, in :func:`forward_step` and in :func:`mlm_tokenizer`, after the
    flags have parsed, so that ``--help`` answers without it.
    """
    from megatron_evomoe.data.bert_dataset import bert_data_config, build_bert_datasets
    from megatron_evomoe.models.bert import build_bert_model
    from megatron_evomoe.training.loop import Task

    binary_head = run.bert.binary_head
    if run.training.save and int(os.environ.get("RANK", "0")) == 0:
        parser = build_parser("", add_bert_args)
        save_model_args(
            run.training.save, run.flags, parser, default_model_name(run.training.save), run.model.vocab_size
        )

    def build_datasets(run: RunConfig, num_samples):
        return build_bert_datasets(bert_data_config(run.data, run.bert), tokenizer, num_samples)

    def build_model(config, pre_process, post_process):
        return build_bert_model(config, pre_process, post_process, add_binary_head=binary_head)

    return Task("bert-moe", build_model, build_datasets, forward_step)


def mlm_tokenizer(args):
    """The tokenizer with the special tokens masked-LM pretraining needs (``data/mlm_tokenizer.py``)."""
    from megatron_evomoe.data.mlm_tokenizer import mlm_tokenizer_from_args

    return mlm_tokenizer_from_args(args)


def cli(argv=None):
    """Parse ``argv`` (default: the command line) and train; returns the training session."""
    description = __doc__.splitlines()[0]
    return main(make_task, description, argv, extra_args_provider=add_bert_args, tokenizer_provider=mlm_tokenizer)


if __name__ == "__main__":
    cli()
