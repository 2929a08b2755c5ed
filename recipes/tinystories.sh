#!/usr/bin/env bash
# TinyStories end to end, streamed from the Hugging Face Hub:  bash recipes/tinystories.sh
# Every step resumes or refuses to overwrite: rerun the script after an interruption.
set -euo pipefail
data="hf:roneneldan/TinyStories"
[ -f tok/tinystories/tokenizer.json ] || homegpt tokenizer --data "$data" --vocab-size 4096 --out tok/tinystories
[ -f data/tinystories/manifest.json ] || homegpt prepare --data "$data" --tokenizer tok/tinystories --out data/tinystories
homegpt train recipes/tinystories.toml --out runs/tinystories --resume
