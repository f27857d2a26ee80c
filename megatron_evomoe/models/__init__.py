"""Model providers (GPT, BERT) built from megatron-core models and our layer specs."""
