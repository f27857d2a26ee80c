"""The training loop built on megatron-core pieces (megatron.training is not in the pip package)."""
