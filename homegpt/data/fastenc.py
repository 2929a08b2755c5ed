"""Fast encoding: the same byte-level BPE, run by tiktoken, used only where it gives the ids tokenizers gives.

HF `tokenizers` builds a full Encoding per document (tokens, offsets, masks); tiktoken returns bare ids and
is several times faster per core (measured in benchmarks/prepare_throughput.py and docs/data.md). Both apply
the tokenizer's pre-tokenizer regex (Qwen2's or GPT-2's: tokenizer.PRE_TOKENIZERS, tiktoken's pat_str), then
BPE within each piece; but tokenizers merges by the merge list while
tiktoken merges any adjacent pair whose bytes form a token, lowest id first. The two agree when token ids
follow the merge order and every token encodes to itself, which holds for tokenizers trained by homegpt.
`choose_encoder` checks exactly that, plus identity on a unicode-heavy probe text; prepare also re-encodes
a sample of its chunks with tokenizers and stops if the two ever differ. The special tokens (<|endoftext|>,
and ChatML's <|im_start|> / <|im_end|> where the tokenizer has them) are tiktoken's special tokens, with
tokenizers' ids.
"""

from __future__ import annotations

import json
import os
from itertools import chain
from pathlib import Path

import numpy as np

from homegpt.errors import UserError

EOT = "<|endoftext|>"
SPECIALS = (EOT, "<|im_start|>", "<|im_end|>")  # tokenizer.SPECIAL_TOKENS (not imported: workers stay light)
ENCODERS = ("auto", "tiktoken", "hf")
CHECK_CHARS = 1 << 14  # characters of a spot-checked piece that are re-encoded with tokenizers

# Exercises every branch of both pre-tokenizer regexes and the byte-level alphabet.
PROBE_TEXT = (
    "Hello, world! It's John's 3rd café—naïve coöperation; they'll've said 'quote' \"dq\" 1,234.56e-7 $42 "
    "#tag @user http://x.y/z?q=1&r=2\n\n\n  leading   spaces\t\ttabs \t mixed\r\nwindows\rcr "
    "日本語のテキスト、句読点。中文文本，标点！한국어 텍스트 العربية النص हिन्दी पाठ ไทย Ελληνικά Кириллица "
    "🙂🚀👩‍👩‍👧‍👦 🇫🇷 e\u0301 a\u0308\u0304 \u00a0nbsp\u2009thin\u3000ideo\u200bzw\u2028ls\u2029ps "
    "<|endoftext|>inside<|endoftext|> <|im_start|>user\nhi<|im_end|>\n<|im_start <|im_end| "
    "\x00\x01\x1f\x7f ~`!@#%^&*()_+-={}[]|\\:;<>?/ ’curly’ «guillemets» "
    "ﬁligature ½ ² Ⅻ ０１２ ｆｕｌｌ IT'S WE'LL 'Ve 'ſ x9.\r\n;\n\n 2026-12-04 0x1F   \n \n\n \t\n"
)


def tokenizer_spec(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def unconvertible(spec: dict) -> str | None:
    """Why this tokenizer.json cannot run as tiktoken, or None when its structure allows it."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        return f"model is {model.get('type')}, not BPE"
    if model.get("dropout") or model.get("byte_fallback") or model.get("continuing_subword_prefix") or \
            model.get("end_of_word_suffix"):
        return "BPE uses dropout, byte fallback or subword affixes"
    if spec.get("normalizer"):
        return "it has a normalizer"
    if _pattern(spec) is None:
        return ("pre-tokenizer is neither Qwen2's (Split + ByteLevel(use_regex=False)) nor GPT-2's "
                "(ByteLevel(add_prefix_space=False, use_regex=True))")
    added = spec.get("added_tokens") or []
    contents = [t.get("content") for t in added]
    if EOT not in contents or len(set(contents)) != len(contents) or not set(contents) <= set(SPECIALS) or any(
            not t.get("special") or any(t.get(k) for k in ("normalized", "lstrip", "rstrip", "single_word"))
            for t in added):
        return f"added tokens are not the special {EOT} (and ChatML's <|im_start|>, <|im_end|>) alone"
    return None


def _pattern(spec: dict) -> str | None:
    """tiktoken's pat_str for this tokenizer.json's pre-tokenizer, or None if it is not one of homegpt's."""
    from homegpt.data.tokenizer import GPT2_PATTERN, QWEN2_PATTERN, pre_tokenizer_name

    return {"qwen2": QWEN2_PATTERN, "gpt2": GPT2_PATTERN}.get(pre_tokenizer_name(spec) or "")


def special_ids(spec: dict) -> dict[str, int]:
    """The added (special) tokens' ids, by content."""
    return {t["content"]: int(t["id"]) for t in spec.get("added_tokens") or []}


def _byte_decoder() -> dict[str, int]:
    from homegpt.data.tokenizer import bytes_to_unicode

    return {c: b for b, c in bytes_to_unicode().items()}


def mergeable_ranks(spec: dict) -> dict[bytes, int]:
    """tiktoken's ranks: each token's bytes -> its id. Valid as merge priorities only if ids follow merges."""
    dec = _byte_decoder()
    vocab = spec["model"]["vocab"]
    specials = set(special_ids(spec)) | {EOT}
    ranks = {bytes(dec[ch] for ch in token): idx for token, idx in vocab.items() if token not in specials}
    if len(ranks) != len(vocab) - len(specials & set(vocab)) or any(bytes([b]) not in ranks for b in range(256)):
        raise ValueError("vocabulary is not byte-level")
    last = -1
    for merge in spec["model"]["merges"]:
        a, b = merge if isinstance(merge, list) else merge.split(" ", 1)
        idx = vocab.get(a + b)
        if idx is None or idx <= last:
            raise ValueError("token ids do not follow the merge order")
        last = idx
    return ranks


def build_tiktoken(spec: dict, eot_id: int):
    import tiktoken

    pattern = _pattern(spec)
    if pattern is None:
        raise ValueError(unconvertible(spec) or "pre-tokenizer is not one of homegpt's")
    return tiktoken.Encoding("homegpt", pat_str=pattern, mergeable_ranks=mergeable_ranks(spec),
                             special_tokens={**special_ids(spec), EOT: eot_id})


def choose_encoder(tok_path: str | Path, requested: str = "auto") -> tuple[str, str]:
    """('tiktoken' | 'hf', why): tiktoken only when it provably (structure) and observably (probe) agrees."""
    if requested not in ENCODERS:
        raise UserError(f"unknown encoder {requested!r}: use {', '.join(ENCODERS)}")
    if requested == "hf":
        return "hf", "asked for"
    reason = _tiktoken_blocker(Path(tok_path))
    if reason is None:
        return "tiktoken", "identical ids to tokenizers (every token checked, probe text checked)"
    if requested == "tiktoken":
        raise UserError(f"--encoder tiktoken is not possible for this tokenizer: {reason}; use --encoder auto")
    return "hf", f"tiktoken not used: {reason}"


def _tiktoken_blocker(tok_path: Path) -> str | None:
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        return "tiktoken is not installed (pip install tiktoken)"
    from tokenizers import Tokenizer

    spec = tokenizer_spec(tok_path)
    reason = unconvertible(spec)
    if reason:
        return reason
    tok = Tokenizer.from_file(str(tok_path))
    try:
        enc = build_tiktoken(spec, tok.token_to_id(EOT))
    except ValueError as e:
        return str(e)
    dec = _byte_decoder()
    specials = set(special_ids(spec))
    for token, idx in spec["model"]["vocab"].items():  # every token must encode to itself in both
        if token in specials:
            continue
        if [t.id for t in tok.model.tokenize(token)] != [idx]:
            return f"token {idx} does not encode to itself with tokenizers"
        if enc._encode_single_piece(bytes(dec[ch] for ch in token)) != [idx]:
            return f"token {idx} does not encode to itself with tiktoken"
    if enc.encode(PROBE_TEXT, allowed_special="all") != tok.encode(PROBE_TEXT).ids:
        return "the probe text encodes differently"
    return None


class Encoder:
    """Encodes pieces of documents, appending <|endoftext|> after each document's last piece."""

    def __init__(self, tok_path: str | Path, kind: str, dtype: str, eot_id: int) -> None:
        from tokenizers import Tokenizer

        self.kind, self.dtype, self.eot = kind, np.dtype(dtype), eot_id
        self.hf = Tokenizer.from_file(str(tok_path))
        self.tt = build_tiktoken(tokenizer_spec(tok_path), eot_id) if kind == "tiktoken" else None

    def encode(self, texts: list[str], ends: list[bool] | np.ndarray, use_hf: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
        """(all ids in order, as self.dtype; ids per piece, <|endoftext|> included)."""
        eot = np.array([self.eot], np.uint32)
        if self.tt is None or use_hf:
            arrays = [np.array(e.ids, np.uint32) for e in self.hf.encode_batch(texts)]
        else:  # encode_to_numpy: no Python int per token, which is most of the time (and memory) otherwise
            enc = self.tt.encode_to_numpy
            arrays = [enc(t, allowed_special="all") for t in texts]
        counts = np.fromiter((len(a) + bool(end) for a, end in zip(arrays, ends, strict=True)), np.int64, len(texts))
        parts = chain.from_iterable((a, eot) if end else (a,) for a, end in zip(arrays, ends, strict=True))
        tokens = np.concatenate(list(parts)) if len(texts) else np.empty(0, np.uint32)
        return tokens.astype(self.dtype, copy=False), counts


class EncoderMismatch(Exception):
    """tiktoken and tokenizers gave different ids for the same text: never silently write either."""


def spot_check(enc: Encoder, texts: list[str]) -> None:
    """Encode the start of the first, middle and last piece with both encoders: a few milliseconds, where
    re-encoding whole chunks with tokenizers would cost more time (and memory) than encoding them."""
    from homegpt.data.sources import safe_cut

    for text in {texts[0], texts[len(texts) // 2], texts[-1]}:
        sample = text[: safe_cut(text, CHECK_CHARS)] if len(text) > CHECK_CHARS else text
        if enc.tt.encode(sample, allowed_special="all") != enc.hf.encode(sample).ids:
            raise EncoderMismatch("tiktoken and tokenizers disagree")


_WORKER: Encoder | None = None


def init_worker(tok_path: str, kind: str, dtype: str, eot_id: int) -> None:
    """Pool initializer: each worker process encodes on one core (the pool provides the parallelism)."""
    global _WORKER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER = Encoder(tok_path, kind, dtype, eot_id)


def encode_chunk(texts: list[str], ends: list[bool], check: bool, encoder: Encoder | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, tokens per piece, UTF-8 bytes per piece) of one chunk; `check` re-encodes with tokenizers."""
    enc = encoder or _WORKER
    assert enc is not None, "encode_chunk runs in a worker started with init_worker"
    tokens, counts = enc.encode(texts, ends)
    if check and enc.tt is not None and texts:
        spot_check(enc, texts)
    nbytes = np.fromiter((len(t.encode("utf-8")) for t in texts), np.int64, len(texts))
    return tokens, counts, nbytes
