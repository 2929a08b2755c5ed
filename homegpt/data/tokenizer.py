"""Byte-level BPE tokenizer, trained with Hugging Face `tokenizers` (GPT-2's scheme).

Byte-level means every string is encodable (no unknown token) and decoding gives back the exact bytes.
Before BPE, a pre-tokenizer cuts text into pieces that no token crosses. New tokenizers cut it the Qwen2 way
("qwen2", the default: Qwen2/Qwen3's regex, digits one at a time, then ByteLevel without its own regex), which
llama.cpp knows as the `qwen2` pre-tokenizer and Ollama's qwen3 engine always applies, so a model exported to
either runtime gets the ids it was trained on; "gpt2" keeps GPT-2's regex (ByteLevel with use_regex, llama.cpp's
`gpt-2`), what every tokenizer from before the default changed has, and which keeps working everywhere.
No normalizer, either way: decode(encode(s)) == s for every string.
Three special tokens come first (ids 0, 1, 2): <|endoftext|>, which separates documents, and ChatML's
<|im_start|> and <|im_end|>, reserved for chat fine-tuning (conversations.py, `homegpt sft`), so a chat model
needs no vocabulary surgery; pretraining never sees the two. Tokenizers from before they were reserved have
<|endoftext|> only; `homegpt sft` adds the two at the end of their vocabulary. The model's vocabulary is the
tokenizer's size rounded up to a multiple of 64 (GPT-2's 50,257 -> 50,304), which keeps matmuls on fast
kernel shapes.

The tokenizer is trained on a bounded, seeded sample of the training split (sample_bytes, or sample_docs
documents), so a 100 GB corpus never needs 100 GB of memory: a uniform random sample, by a seeded hash of
each document's position, of the first SCAN_FACTOR times the sample size. Bytes per token are measured on
up to VAL_SAMPLE_BYTES of held-out documents.
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from homegpt.data.sources import PIECE_CHARS, Corpus, as_source, cut_pieces, iter_assigned
from homegpt.errors import UserError

DEFAULT_SAMPLE_BYTES = 100_000_000
SCAN_FACTOR = 10  # the sample is drawn from at most this many times its size of the training split
VAL_SAMPLE_BYTES = 10_000_000

EOT = "<|endoftext|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"  # ChatML's turn markers (conversations.py)
SPECIAL_TOKENS = (EOT, IM_START, IM_END)  # what `homegpt tokenizer` reserves, in this order (ids 0, 1, 2)
MIN_VOCAB = 256 + len(SPECIAL_TOKENS) + 1  # 256 byte symbols + the special tokens, and at least one merge
MAX_VOCAB = 2**32 - 1

# How text is cut before BPE (see the module's docstring). The regexes are tiktoken's pat_str too (fastenc.py).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                 r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
PRE_TOKENIZERS = ("qwen2", "gpt2")  # the first is the default
DEFAULT_PRE_TOKENIZER = PRE_TOKENIZERS[0]
LLAMA_PRE = {"qwen2": "qwen2", "gpt2": "gpt-2"}  # llama.cpp's names (tokenizer.ggml.pre in a GGUF file)


def round_vocab(n: int, multiple: int = 64) -> int:
    return -(-n // multiple) * multiple


def check_vocab_size(vocab_size: int) -> None:
    if not MIN_VOCAB <= vocab_size <= 1_000_000:
        raise UserError(f"vocab size must be between {MIN_VOCAB} and 1,000,000, got {vocab_size}")


def check_pre_tokenizer(name: str) -> None:
    if name not in PRE_TOKENIZERS:
        raise UserError(f"unknown pre-tokenizer {name!r}: use {' or '.join(PRE_TOKENIZERS)}")


def make_pre_tokenizer(name: str = DEFAULT_PRE_TOKENIZER):
    """The pre-tokenizer of a new tokenizer: "qwen2" serializes exactly as Qwen2's tokenizer.json spells it
    (without its NFC normalizer), "gpt2" as GPT-2's. add_prefix_space=False: text is encoded as written."""
    check_pre_tokenizer(name)
    if name == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False)
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])


def llama_pre_tokenizer(spec: dict) -> str | None:
    """llama.cpp's name for how this tokenizer.json (parsed) cuts text before BPE: "qwen2" for Qwen2's Split +
    ByteLevel(use_regex=False), "gpt-2" for ByteLevel(use_regex=True, add_prefix_space=False) alone, None for
    anything else (a normalizer, another pattern or behavior, a prefix space, more steps), which no llama.cpp
    pre-tokenizer is known to reproduce. tokenizer.ggml.pre of a GGUF export."""
    name = pre_tokenizer_name(spec)
    return LLAMA_PRE[name] if name else None


def pre_tokenizer_name(spec: dict) -> str | None:
    """"qwen2" or "gpt2" (PRE_TOKENIZERS) where a parsed tokenizer.json splits text exactly so, else None."""
    if spec.get("normalizer"):
        return None
    pre = spec.get("pre_tokenizer") or {}
    if _is_byte_level(pre, use_regex=True):
        return "gpt2"
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not isinstance(steps, list) or len(steps) != 2 or not isinstance(steps[0], dict):
        return None
    split, byte_level = steps
    if split.get("type") == "Split" and split.get("pattern") == {"Regex": QWEN2_PATTERN} and \
            split.get("behavior") == "Isolated" and split.get("invert") is False and \
            _is_byte_level(byte_level, use_regex=False):
        return "qwen2"
    return None


def _is_byte_level(pre, use_regex: bool) -> bool:
    # tokenizers reads a missing use_regex as True (files from before the option existed)
    return isinstance(pre, dict) and pre.get("type") == "ByteLevel" and pre.get("add_prefix_space") is False \
        and pre.get("use_regex", True) is use_regex


def train_tokenizer_on(corpus: Corpus, vocab_size: int, pre_tokenizer: str = DEFAULT_PRE_TOKENIZER) -> Tokenizer:
    check_vocab_size(vocab_size)
    return _train(corpus.train, vocab_size, pre_tokenizer)


def _train(texts: list[str], vocab_size: int, pre_tokenizer: str = DEFAULT_PRE_TOKENIZER) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = make_pre_tokenizer(pre_tokenizer)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


@dataclass
class Sample:
    train: list[str]  # the sampled training documents (pieces of long ones), in corpus order
    val: list[str]  # the first held-out documents, up to VAL_SAMPLE_BYTES
    scanned_bytes: int  # training-split bytes read to draw the sample
    complete: bool  # the whole training split was read


def sample_corpus(source: str, seed: int = 0, sample_bytes: int | None = None, sample_docs: int | None = None
                  ) -> Sample:
    """A uniform random sample of the training split's documents, by bytes or by count: the documents whose
    seeded hash is smallest (a bottom-k sample, one pass, memory bounded by the sample)."""
    if sample_bytes is not None and sample_bytes < 1:
        raise UserError(f"--sample-bytes must be positive, got {sample_bytes}")
    if sample_docs is not None and sample_docs < 1:
        raise UserError(f"--sample-docs must be positive, got {sample_docs}")
    if sample_docs is None and sample_bytes is None:
        sample_bytes = DEFAULT_SAMPLE_BYTES
    heap: list[tuple[int, int, str, int]] = []  # (-key, index, text, bytes): the largest key is popped first
    held, scanned, index, val, val_bytes = 0, 0, 0, [], 0
    scan_limit = SCAN_FACTOR * (sample_bytes if sample_docs is None else sample_docs)
    complete = True
    docs = iter_assigned(as_source(source), seed)
    for split, doc in docs:
        for text, _ in cut_pieces(doc):
            if (scanned if sample_docs is None else index) >= scan_limit:
                complete = False  # read enough to draw from (a long document stops here too)
                break
            n = len(text.encode("utf-8"))
            if split == "val":
                if val_bytes < VAL_SAMPLE_BYTES:
                    val.append(text)
                    val_bytes += n
                continue
            key = int.from_bytes(hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest(), "little")
            heapq.heappush(heap, (-key, index, text, n))
            held += n
            scanned += n
            index += 1
            while len(heap) > 1 and (held > sample_bytes if sample_docs is None else len(heap) > sample_docs):
                held -= heapq.heappop(heap)[3]
        if not complete:
            break
    if not val:  # one long document's held-out tail comes after its head: skip to it without reading the rest
        for split, doc in docs:
            if split == "val":
                val.extend(text for text, _ in islice(cut_pieces(doc), VAL_SAMPLE_BYTES // PIECE_CHARS + 1))
                break
    if not heap and not val:
        raise UserError(f"source {source!r} holds no text: the corpus is empty")
    if not heap or not val:
        raise UserError("the corpus is too small to hold out validation text: give it more text")
    train = [text for _, _, text, _ in sorted(heap, key=lambda item: item[1])]
    return Sample(train, val, scanned, complete)


def train_tokenizer(source: str, vocab_size: int, out_dir: str | Path, force: bool = False, *,
                    sample_bytes: int | None = None, sample_docs: int | None = None, seed: int = 0,
                    pre_tokenizer: str = DEFAULT_PRE_TOKENIZER) -> dict:
    """Train on a seeded sample of the source's training split, save tokenizer.json, report held-out bytes
    per token. pre_tokenizer: "qwen2" (the default) or "gpt2" (PRE_TOKENIZERS)."""
    check_vocab_size(vocab_size)
    check_pre_tokenizer(pre_tokenizer)
    out = Path(out_dir)
    path = out / "tokenizer.json"
    if path.exists() and not force:
        raise UserError(f"{path} already exists: choose another --out or pass --force to replace it")
    sample = sample_corpus(source, seed, sample_bytes, sample_docs)
    tok = _train(sample.train, vocab_size, pre_tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tok.save(str(tmp))
    tmp.replace(path)
    info = describe(tok, Corpus(str(source), sample.train, sample.val))
    info.update(path=str(path), sample_documents=len(sample.train), sample_bytes=sum(
        len(t.encode("utf-8")) for t in sample.train), scanned_bytes=sample.scanned_bytes,
        whole_split_scanned=sample.complete, seed=seed, pre_tokenizer=pre_tokenizer)
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


def token_byte_lengths(tok: Tokenizer, model_vocab: int) -> list[int]:
    """UTF-8 byte length of every token id (0 for special and padding ids): the denominator of bits/byte."""
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    lengths = [0] * model_vocab
    specials = {t.content for t in tok.get_added_tokens_decoder().values()}
    for token, idx in tok.get_vocab().items():
        if token in specials or idx >= model_vocab:
            continue
        lengths[idx] = sum(1 for ch in token if ch in byte_decoder)
    return lengths


def bytes_to_unicode() -> dict[int, str]:
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


def add_chat_tokens(tok: Tokenizer) -> list[str]:
    """Add ChatML's <|im_start|> and <|im_end|> as special tokens where a tokenizer (from before they were
    reserved) lacks them: at the end of its vocabulary, ids unchanged for everything else. The added ones."""
    from tokenizers import AddedToken

    missing = [t for t in (IM_START, IM_END) if tok.token_to_id(t) is None]
    if missing:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False,
                                           single_word=False) for t in missing])
    return missing
