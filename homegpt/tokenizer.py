"""Byte-level BPE tokenizer, trained with Hugging Face `tokenizers` (GPT-2's scheme).

Byte-level means every string is encodable (no unknown token) and decoding gives back the exact bytes.
One special token, <|endoftext|>, separates documents. The model's vocabulary is the tokenizer's size
rounded up to a multiple of 64 (GPT-2's 50,257 -> 50,304), which keeps matmuls on fast kernel shapes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from homegpt.errors import UserError
from homegpt.sources import Corpus, load_corpus

EOT = "<|endoftext|>"
MIN_VOCAB = 257 + 1  # 256 byte symbols + end-of-text, and at least one merge
MAX_VOCAB = 2**32 - 1


def round_vocab(n: int, multiple: int = 64) -> int:
    return -(-n // multiple) * multiple


def train_tokenizer_on(corpus: Corpus, vocab_size: int) -> Tokenizer:
    if not MIN_VOCAB <= vocab_size <= 1_000_000:
        raise UserError(f"vocab size must be between {MIN_VOCAB} and 1,000,000, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    # add_prefix_space=False: the text is encoded exactly as written, so decode(encode(s)) == s.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus.train, trainer=trainer, length=len(corpus.train))
    return tok


def train_tokenizer(source: str, vocab_size: int, out_dir: str | Path, force: bool = False) -> dict:
    """Train on the source's training split, save tokenizer.json, report held-out bytes per token."""
    out = Path(out_dir)
    path = out / "tokenizer.json"
    if path.exists() and not force:
        raise UserError(f"{path} already exists: choose another --out or pass --force to replace it")
    corpus = load_corpus(source)
    tok = train_tokenizer_on(corpus, vocab_size)
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tok.save(str(tmp))
    tmp.replace(path)
    info = describe(tok, corpus)
    info["path"] = str(path)
    return info


def describe(tok: Tokenizer, corpus: Corpus) -> dict:
    val_bytes = corpus.nbytes("val")
    val_tokens = sum(len(e.ids) for e in tok.encode_batch(corpus.val))
    return {
        "vocab_size": tok.get_vocab_size(),
        "model_vocab_size": round_vocab(tok.get_vocab_size()),
        "val_bytes": val_bytes,
        "val_tokens": val_tokens,
        "bytes_per_token": val_bytes / max(1, val_tokens),
    }


def load_tokenizer(path: str | Path) -> Tokenizer:
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise UserError(f"tokenizer {p} does not exist: train one with homegpt tokenizer")
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as e:  # tokenizers raises a bare Exception for a malformed file
        raise UserError(f"{p} is not a tokenizer.json file: {str(e).splitlines()[0]}") from None
    if tok.token_to_id(EOT) is None:
        raise UserError(f"{p} has no {EOT} token: train it with homegpt tokenizer")
    return tok


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def token_byte_lengths(tok: Tokenizer, model_vocab: int) -> list[int]:
    """UTF-8 byte length of every token id (0 for special and padding ids): the denominator of bits/byte."""
    byte_decoder = {c: b for b, c in _bytes_to_unicode().items()}
    lengths = [0] * model_vocab
    specials = {t.content for t in tok.get_added_tokens_decoder().values()}
    for token, idx in tok.get_vocab().items():
        if token in specials or idx >= model_vocab:
            continue
        lengths[idx] = sum(1 for ch in token if ch in byte_decoder)
    return lengths


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, as byte-level BPE stores tokens."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))
