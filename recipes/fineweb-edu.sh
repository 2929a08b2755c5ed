#!/usr/bin/env bash
# A 2.5B-token FineWeb-Edu slice end to end, streamed from the Hugging Face Hub:  bash recipes/fineweb-edu.sh
# The tokenizer trains on a 200 MB seeded sample; prepare stops after 2.5B training tokens (--max-tokens).
# Every step resumes or refuses to overwrite: rerun the script after an interruption.
set -euo pipefail
data="hf:HuggingFaceFW/fineweb-edu"
flags=(--hf-config sample-10BT --split train --text-column text)
[ -f tok/fineweb-edu/tokenizer.json ] || \
  homegpt tokenizer --data "$data" "${flags[@]}" --vocab-size 50257 --sample-bytes 2e8 --out tok/fineweb-edu
[ -f data/fineweb-edu/manifest.json ] || \
  homegpt prepare --data "$data" "${flags[@]}" --tokenizer tok/fineweb-edu --out data/fineweb-edu --max-tokens 2.5e9
homegpt train recipes/fineweb-edu.toml --out runs/fineweb-edu --resume
