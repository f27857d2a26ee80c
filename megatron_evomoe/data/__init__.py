"""Data pipeline: tokenizers, corpus reading, .bin/.idx preprocessing and the GPT dataset provider.

The pipeline is Megatron-LM's: raw JSONL → `tools/preprocess_data.py` → megatron.core IndexedDataset files →
megatron.core `GPTDataset` through `gpt_dataset.build_gpt_datasets`. Files written here are read by
Megatron-LM unchanged and vice versa.
"""
