#!/usr/bin/env bash
# Chat fine-tuning on HuggingFaceTB/smol-smoltalk (streamed from the Hugging Face Hub), on a GPU:
#   bash recipes/smol-smoltalk.sh [BASE_RUN]        (default runs/fineweb-edu, from recipes/fineweb-edu.sh)
# Loss on the assistant's turns only; conversations longer than the context are dropped and counted.
# About 64K tokens per step (64 conversation rows of 1,025 tokens), one epoch, the rate decaying to 0.
# Rerun the script after an interruption: the SFT run resumes, export is repeated.
set -euo pipefail
base="${1:-runs/fineweb-edu}"
out="${base}-smoltalk"
homegpt sft "$base" --data hf:HuggingFaceTB/smol-smoltalk --split train --out "$out" --resume \
  --epochs 1 --batch-tokens 65536 --micro-batch 0 --eval-tokens 1048576 --checkpoint-interval 500
homegpt eval "$out"
homegpt export "$out" "$out-hf" --force
echo "chat with it: homegpt sample $out --chat    serve it: homegpt serve $out"
