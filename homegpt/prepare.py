"""Token shards: documents encoded, joined by <|endoftext|>, packed end to end with no padding.

A prepared directory holds
    tokenizer.json   a copy of the tokenizer that made the ids
    train.bin        token ids, raw little-endian uint16 (vocab <= 65,536) or uint32, for np.memmap
    val.bin          the held-out split, same format
    manifest.json    tokenizer hash, dtype, token / byte / document counts per split, the source

Every document is followed by <|endoftext|>, so the model learns where documents end and never sees
padding. The byte counts are of the UTF-8 text, the denominator of bits per byte.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from homegpt.errors import UserError
from homegpt.sources import load_corpus
from homegpt.tokenizer import EOT, file_sha256, load_tokenizer, round_vocab

MANIFEST_VERSION = 1
ENCODE_BATCH = 256


def token_dtype(model_vocab: int) -> np.dtype:
    if model_vocab <= 2**16:
        return np.dtype("<u2")
    if model_vocab <= 2**32:
        return np.dtype("<u4")
    raise UserError(f"vocab size {model_vocab} is too large for uint32 token ids")


def prepare(source: str, tokenizer_path: str | Path, out_dir: str | Path, force: bool = False) -> dict:
    """Encode a source into train/val shards under out_dir and return the manifest."""
    out = Path(out_dir)
    tok_file = Path(tokenizer_path)
    tok_file = tok_file / "tokenizer.json" if tok_file.is_dir() else tok_file
    tok = load_tokenizer(tok_file)
    if (out / "manifest.json").exists() and not force:
        raise UserError(f"{out} already holds prepared data: choose another --out or pass --force")
    corpus = load_corpus(source)
    model_vocab = round_vocab(tok.get_vocab_size())
    dtype = token_dtype(model_vocab)
    eot = tok.token_to_id(EOT)
    out.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split in ("train", "val"):
        docs = getattr(corpus, split)
        splits[split] = _write_split(tok, docs, eot, dtype, out / f"{split}.bin")
        splits[split]["bytes"] = corpus.nbytes(split)
        splits[split]["documents"] = len(docs)
    if splits["val"]["tokens"] < 2 or splits["train"]["tokens"] < 2:
        raise UserError(f"source {source!r} gives too little text to train on")
    tmp_tok = out / "tokenizer.json.tmp"
    shutil.copyfile(tok_file, tmp_tok)
    tmp_tok.replace(out / "tokenizer.json")
    manifest = {
        "version": MANIFEST_VERSION,
        "source": source,
        "tokenizer_sha256": file_sha256(out / "tokenizer.json"),
        "vocab_size": tok.get_vocab_size(),
        "model_vocab_size": model_vocab,
        "eot_id": eot,
        "dtype": dtype.name,
        "splits": splits,
    }
    _write_json_atomic(out / "manifest.json", manifest)
    return manifest


def _write_split(tok, docs: list[str], eot: int, dtype: np.dtype, path: Path) -> dict:
    """Encode in batches and stream to a temp file; rename only when complete."""
    tmp = path.with_suffix(".bin.tmp")
    n_tokens = 0
    with open(tmp, "wb") as f:
        for i in range(0, len(docs), ENCODE_BATCH):
            for enc in tok.encode_batch(docs[i : i + ENCODE_BATCH]):
                ids = np.fromiter(enc.ids, dtype=np.int64, count=len(enc.ids))
                arr = np.append(ids, eot).astype(dtype)
                f.write(arr.tobytes())
                n_tokens += arr.size
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return {"file": path.name, "tokens": n_tokens}


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_manifest(data_dir: str | Path) -> dict:
    d = Path(data_dir)
    path = d / "manifest.json"
    if not path.is_file():
        raise UserError(f"{d} is not a prepared data directory (no manifest.json): run homegpt prepare")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        _ = manifest["splits"]["train"]["tokens"], manifest["dtype"], manifest["tokenizer_sha256"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise UserError(f"{path} is damaged: prepare the data again") from None
    if not (d / "tokenizer.json").is_file():
        raise UserError(f"{d} has no tokenizer.json: prepare the data again")
    if file_sha256(d / "tokenizer.json") != manifest["tokenizer_sha256"]:
        raise UserError(f"{d}/tokenizer.json does not match the manifest's tokenizer hash: prepare again")
    return manifest


def open_split(data_dir: str | Path, split: str, manifest: dict | None = None) -> np.memmap:
    """A split as a read-only memory map, after checking its length against the manifest."""
    d = Path(data_dir)
    manifest = manifest or read_manifest(d)
    info = manifest["splits"][split]
    path = d / info["file"]
    dtype = np.dtype(manifest["dtype"])
    if not path.is_file() or path.stat().st_size != info["tokens"] * dtype.itemsize:
        raise UserError(f"{path} is missing or truncated (manifest says {info['tokens']} tokens): prepare again")
    return np.memmap(path, dtype=dtype, mode="r")
