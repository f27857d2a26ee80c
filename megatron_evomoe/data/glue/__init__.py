"""GLUE fine-tuning data: task definitions, TSV readers, input encoding, metrics, submission files."""
