#!/usr/bin/env bash
# Corpus -> tokenizer -> Megatron .bin/.idx for GPT (documents) and BERT/RoBERTa (sentences).
#
#   INPUT=corpus.jsonl OUTPUT_DIR=data bash examples/preprocess_corpus.sh
#
# Trains a byte-level BPE tokenizer (GPT-2 format: vocab.json + merges.txt; the BERT scripts add
# RoBERTa's special tokens themselves), then writes
#   $OUTPUT_DIR/corpus_text_document.bin/.idx   one sequence per document, EOD appended (GPT)
#   $OUTPUT_DIR/corpus_text_sentence.bin/.idx   one sequence per sentence (BERT/RoBERTa, --split-sentences)
# Batch arithmetic: none here; training packs these token streams into --seq-length samples, so one
# iteration consumes global batch x seq length tokens (see the training examples).
# Environment: INPUT (JSONL with a "text" key, or text files / a glob), OUTPUT_DIR, VOCAB_SIZE (50257,
# GPT-2's), WORKERS (8). DRY_RUN=1 checks the input and prints the commands without running them.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"

INPUT=${INPUT:?set INPUT to the corpus (JSONL with a text key, or text files)}
OUTPUT_DIR=${OUTPUT_DIR:-data}
VOCAB_SIZE=${VOCAB_SIZE:-50257}
WORKERS=${WORKERS:-8}
TOKENIZER_DIR=$OUTPUT_DIR/tokenizer

run() {
    echo "+ $*"
    if [[ "${DRY_RUN:-0}" != 1 ]]; then "$@"; fi
}

compgen -G "$INPUT" > /dev/null || { echo "error: no input matches $INPUT" >&2; exit 2; }
run "$PYTHON" "$REPO/tools/train_tokenizer.py" --input "$INPUT" --type bpe --vocab-size "$VOCAB_SIZE" \
    --output-dir "$TOKENIZER_DIR"
TOKENIZER=(--tokenizer-type GPT2BPETokenizer --vocab-file "$TOKENIZER_DIR/vocab.json"
           --merge-file "$TOKENIZER_DIR/merges.txt")
run "$PYTHON" "$REPO/tools/preprocess_data.py" --input "$INPUT" --output-prefix "$OUTPUT_DIR/corpus" \
    "${TOKENIZER[@]}" --append-eod --workers "$WORKERS"
run "$PYTHON" "$REPO/tools/preprocess_data.py" --input "$INPUT" --output-prefix "$OUTPUT_DIR/corpus" \
    "${TOKENIZER[@]}" --split-sentences --workers "$WORKERS"
echo "data: --data-path $OUTPUT_DIR/corpus_text_document (GPT), $OUTPUT_DIR/corpus_text_sentence (BERT); ${TOKENIZER[*]}"
