"""The values of --tokenizer-type (Megatron-LM's names), apart from the tokenizers themselves.

The flag parser lists them; ``tokenizer.py``, which builds the tokenizers, imports megatron-core and
the Rust ``tokenizers`` library, which ``--help`` should not wait for.
"""

GPT2_TYPE = "GPT2BPETokenizer"
BERT_LOWER_TYPE = "BertWordPieceLowerCase"
BERT_CASE_TYPE = "BertWordPieceCase"
HF_TYPE = "HuggingFaceTokenizer"
TOKENIZER_TYPES = (GPT2_TYPE, BERT_LOWER_TYPE, BERT_CASE_TYPE, HF_TYPE)
