import json

import numpy as np
import pytest

from homegpt.errors import UserError
from homegpt.prepare import open_split, prepare, read_manifest, token_dtype
from homegpt.sources import load_corpus
from homegpt.tokenizer import EOT, load_tokenizer


def test_shards_are_packed_documents_with_eot(source, data_dir):
    manifest = read_manifest(data_dir)
    tok = load_tokenizer(data_dir)
    corpus = load_corpus(source)
    assert manifest["dtype"] == "uint16"
    for split in ("train", "val"):
        arr = open_split(data_dir, split)
        info = manifest["splits"][split]
        assert arr.dtype == np.uint16 and len(arr) == info["tokens"]
        assert info["documents"] == len(getattr(corpus, split))
        assert info["bytes"] == corpus.nbytes(split)
        eot = tok.token_to_id(EOT)
        assert int((arr == eot).sum()) == info["documents"] and arr[-1] == eot
        # no padding: decoding the shard gives the documents back, joined by end-of-text
        text = tok.decode(arr.tolist(), skip_special_tokens=False)
        assert text == EOT.join(getattr(corpus, split)) + EOT


def test_token_dtype_by_vocab():
    assert token_dtype(50304) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65600) == np.uint32


def test_refuses_to_overwrite_and_detects_truncation(source, tokenizer_dir, tmp_path):
    prepare(source, tokenizer_dir, tmp_path)
    with pytest.raises(UserError, match="already holds prepared data"):
        prepare(source, tokenizer_dir, tmp_path)
    before = (tmp_path / "train.bin").read_bytes()
    (tmp_path / "train.bin").write_bytes(before[:-10])
    with pytest.raises(UserError, match="truncated"):
        open_split(tmp_path, "train")


def test_manifest_must_match_tokenizer(source, tokenizer_dir, tmp_path):
    prepare(source, tokenizer_dir, tmp_path)
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["tokenizer_sha256"] = "0" * 64
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="does not match"):
        read_manifest(tmp_path)
