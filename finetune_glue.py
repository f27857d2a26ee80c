"""Fine-tune a pretrained BERT/RoBERTa-MoE on a GLUE task; report dev metrics; predict the test set.

From a pretrain_bert_moe.py checkpoint (saved in any parallel layout; its model flags are read from
the checkpoint's model_args.json), RoBERTa's recipe, best dev epoch to JSON, test predictions in
the GLUE leaderboard format::

    python finetune_glue.py --task RTE --data-dir glue_data/RTE --pretrained-checkpoint ckpt/bert \
        --epochs 10 --lr 2e-5 --micro-batch-size 16 --seq-length 128 --seed 1 \
        --save ckpt/bert-RTE --results-json results/bert-RTE.json --predict --predict-dir submission/

RTE from a fine-tuned MNLI model (as RoBERTa and the paper do): ``--pretrained-checkpoint ckpt/bert-MNLI``.
Predict only, with a fine-tuned checkpoint: ``--load ckpt/bert-RTE --epochs 0 --predict``.
Several processes: ``torchrun --nproc-per-node 8 finetune_glue.py ... --tensor-model-parallel-size 2
--sequence-parallel`` (see docs/bert_glue.md). The logic is in megatron_evomoe/training/finetune.py.
"""

from megatron_evomoe.training.finetune_entry import main

if __name__ == "__main__":
    main(description=__doc__.splitlines()[0])
