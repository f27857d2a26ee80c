"""Pretrain a GPT mixture-of-experts language model (EvoMoE or a baseline router).

Single process (CPU or one GPU)::

    python pretrain_gpt_moe.py --tokenizer-type GPT2BPETokenizer --vocab-file tok/vocab.json \
        --merge-file tok/merges.txt --data-path data/corpus_text_document --split 949,50,1 \
        --num-layers 4 --hidden-size 128 --num-attention-heads 4 --seq-length 128 \
        --num-experts 4 --moe-router-type dts --micro-batch-size 8 --global-batch-size 16 \
        --train-iters 300 --lr 1e-3 --log-interval 10 --eval-interval 100 --save ckpt --save-interval 100

Several processes: ``torchrun --nproc-per-node 8 pretrain_gpt_moe.py ... --expert-model-parallel-size 8``
(see examples/ for the paper's configurations and multi-node launches). ``--dry-run`` (with
``WORLD_SIZE=8`` in the environment, no launcher) validates such a config and prints parameter counts
and a per-GPU memory estimate without training. ``--help`` lists every flag by group.
"""

from functools import partial

from megatron_evomoe.run_config import RunConfig
from megatron_evomoe.training.entry import main


def forward_step(batch, model):
    """Per-token losses on the last stage; the loss function masks and sums them."""
    from megatron_evomoe.models.gpt import gpt_forward, masked_token_loss

    output = gpt_forward(model, batch)
    return output, partial(masked_token_loss, loss_mask=batch["loss_mask"])


def make_task(run: RunConfig, tokenizer):
    """GPT providers: model for this pipeline stage, megatron.core GPT datasets, forward step.

    megatron-core is imported here and in :func:`forward_step`, after the flags have parsed, so that
    ``--help`` answers without it."""
    from megatron_evomoe.data.gpt_dataset import build_gpt_datasets, require_data
    from megatron_evomoe.models.gpt import build_gpt_model
    from megatron_evomoe.training.loop import Task

    def build_datasets(run: RunConfig, num_samples):
        return build_gpt_datasets(require_data(run.data), tokenizer, num_samples)

    def build_model(config, pre_process, post_process):
        return build_gpt_model(config, pre_process, post_process)

    return Task("gpt-moe", build_model, build_datasets, forward_step)


if __name__ == "__main__":
    main(make_task, __doc__.splitlines()[0])
