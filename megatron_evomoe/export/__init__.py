"""Model export: a trained checkpoint as a self-contained directory for other stacks (Hugging Face).

Nothing here imports ``transformers``; writing a directory needs only ``safetensors`` (the ``[hf]``
extra). ``modeling_evomoe_gpt.py`` is the file copied into the exported directory, not imported here.
"""
