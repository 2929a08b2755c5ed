#!/usr/bin/env bash
# The 51M BookCorpus run end to end, from your copy of BookCorpus (a file, folder or glob in any supported
# format: .txt, .jsonl, .json, .parquet, .csv, optionally .gz / .zst):
#   bash recipes/bookcorpus-51m.sh /path/to/bookcorpus [recipes/bookcorpus-compute-optimal.toml]
# A Hugging Face copy stored as parquet or JSON works too: pass hf:OWNER/NAME instead of the path.
# Every step resumes or refuses to overwrite: rerun the script after an interruption.
set -euo pipefail
src="${1:?usage: bash recipes/bookcorpus-51m.sh /path/to/bookcorpus [CONFIG.toml]}"
config="${2:-recipes/bookcorpus-51m.toml}"
case "$src" in hf:*|file:*) data="$src" ;; *) data="file:$src" ;; esac
[ -f tok/bookcorpus/tokenizer.json ] || homegpt tokenizer --data "$data" --vocab-size 50257 --out tok/bookcorpus
[ -f data/bookcorpus/manifest.json ] || homegpt prepare --data "$data" --tokenizer tok/bookcorpus --out data/bookcorpus
homegpt train "$config" --out "runs/$(basename "$config" .toml)" --resume
