"""Bits per byte on any text: a source's documents encoded and scored as they stream, in bounded memory.

Two definitions, one per kind of text (docs/evaluation.md compares them):

    documents   each document is scored on its own, as lm-evaluation-harness's loglikelihood_rolling does:
                the model reads <|endoftext|> and then the document, and predicts every one of its tokens
                once, in consecutive windows of its context (a window after the first starts from the last
                token of the one before; the last window of a long document is right-aligned, so the
                tokens it predicts see a whole context); nothing after the document is predicted. Loss,
                perplexity and bits per byte are over exactly the document's tokens and UTF-8 bytes. This
                is what any text handed to `homegpt eval --data` gets.
    stream      the documents joined by <|endoftext|> into one token stream, as `homegpt prepare` packs
                them, cut into non-overlapping windows of the context across document boundaries; every
                token after the first is predicted, <|endoftext|> included (its nats count, it has no
                bytes). This is how training measures the held-out split (train/heldout.py's evaluate_tokens over
                the shards); here it re-encodes a run's own held-out documents when its shards are gone.

Memory: documents are read one at a time and long ones in pieces (sources.cut_pieces: encoding the pieces
gives the ids of the whole), encoded in batches of about ENCODE_CHARS characters, and scored in batches of
`batch_size` windows. A window shorter than the context is padded on the right with targets that don't
count; attention is causal, so the padding changes nothing before it and the figures are the same for any
batch size (to float rounding).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from homegpt.data.sources import cut_pieces, is_empty, iter_assigned, iter_documents
from homegpt.errors import UserError

ENCODE_CHARS = 1 << 18  # characters per encode_batch call: what memory holds of the text at once
IGNORE = -100  # F.cross_entropy's ignore_index: padded targets add nothing


@dataclass
class Piece:
    ids: list[int]
    first: bool  # the first piece of its document
    last: bool  # the last piece of its document


@dataclass
class Tally:
    nats: float = 0.0
    tokens: int = 0
    bytes: int = 0
    documents: int = 0

    def metrics(self) -> dict:
        if self.tokens == 0:
            raise UserError("the text holds no tokens to predict: nothing to evaluate")
        loss = self.nats / self.tokens
        return {"loss": loss, "perplexity": math.exp(loss), "bpb": self.nats / math.log(2) / max(1, self.bytes),
                "tokens": self.tokens, "bytes": self.bytes, "documents": self.documents}


SCOPES = {"whole": None, "held-out": "val"}  # which documents: every one, or the held-out split's


def source_pieces(source: str, split: str | None = None, seed: int = 0) -> Iterator[tuple[str, bool, bool]]:
    """(text, first, last) pieces of the source's documents in corpus order: every document (split None) or
    one split's ("train" or "val", as `homegpt prepare --seed seed` assigns them)."""
    # whole: the documents as they are (a source of under 20 documents is split inside each one, see sources.py)
    docs = ((None, d) for d in iter_documents(source) if not is_empty(d)) if split is None else (
        (s, d) for s, d in iter_assigned(source, seed) if s == split)
    for _, doc in docs:
        for k, (text, last) in enumerate(cut_pieces(doc)):
            yield text, k == 0, last


def encode_pieces(pieces: Iterable[tuple[str, bool, bool]], tokenizer, chars: int = ENCODE_CHARS
                  ) -> Iterator[Piece]:
    """The pieces' token ids, in order, encoded a batch of about `chars` characters at a time."""
    batch: list[tuple[str, bool, bool]] = []
    size = 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece[0])
        if size >= chars:
            yield from _encode(batch, tokenizer)
            batch, size = [], 0
    yield from _encode(batch, tokenizer)


def _encode(batch: list[tuple[str, bool, bool]], tokenizer) -> Iterator[Piece]:
    if not batch:
        return
    encodings = tokenizer.encode_batch([text for text, _, _ in batch])
    for (_, first, last), enc in zip(batch, encodings, strict=True):
        yield Piece(enc.ids, first, last)


Window = tuple[np.ndarray, int]  # up to block + 1 ids (inputs w[:-1], targets w[1:]); its last n targets count


def document_windows(pieces: Iterable[Piece], block: int, eot: int, tally: Tally) -> Iterator[Window]:
    """Windows that predict every token of each document once, from <|endoftext|> on, as lm-eval's
    loglikelihood_rolling does: consecutive windows of the context, the last one of a long document
    right-aligned (the tokens it predicts see a whole context); counts documents into `tally`."""
    buf = np.empty(0, dtype=np.int64)
    last: np.ndarray | None = None  # the document's previous window
    for piece in pieces:
        if piece.first:
            buf, last = np.asarray([eot], dtype=np.int64), None
        buf = np.concatenate([buf, np.asarray(piece.ids, dtype=np.int64)])
        pos = 0  # buf[pos] is the next window's first input: the last token the previous window predicted
        while len(buf) - pos >= block + 1:
            last = buf[pos : pos + block + 1]
            yield last, block
            pos += block
        buf = buf[pos:]
        if piece.last:
            tally.documents += 1
            if len(buf) > 1:  # buf[0] ends the previous window: together they are one stretch of the document
                tail = np.concatenate([last, buf[1:]])[-(block + 1):] if last is not None else buf
                yield tail, len(buf) - 1
            buf = np.empty(0, dtype=np.int64)


def stream_windows(pieces: Iterable[Piece], block: int, eot: int, tally: Tally) -> Iterator[Window]:
    """The documents joined as prepare packs them (each followed by <|endoftext|>), in the windows
    evaluate_tokens cuts: non-overlapping, every token after the first predicted once."""
    buf = np.empty(0, dtype=np.int64)
    for piece in pieces:
        ids = np.asarray(piece.ids + [eot] if piece.last else piece.ids, dtype=np.int64)
        buf = np.concatenate([buf, ids])
        tally.documents += piece.last
        pos = 0
        while len(buf) - pos >= block + 1:
            yield buf[pos : pos + block + 1], block
            pos += block
        buf = buf[pos:]
    if len(buf) > 1:
        yield buf, len(buf) - 1


@torch.no_grad()
def score_windows(model, windows: Iterable[Window], token_bytes: torch.Tensor, tally: Tally,
                  batch_size: int = 8, autocast=None, progress=None) -> Tally:
    """Add the nats, predicted tokens and bytes of every window to `tally`, batch_size windows at a time."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    device = next(model.parameters()).device
    token_bytes = token_bytes.to(device)
    was_training = model.training
    model.eval()
    batch: list[Window] = []
    try:
        for window in windows:
            batch.append(window)
            if len(batch) == batch_size:
                _score_batch(model, batch, token_bytes, tally, device, autocast)
                batch = []
                if progress is not None:
                    progress(tally)
        if batch:
            _score_batch(model, batch, token_bytes, tally, device, autocast)
    finally:
        model.train(was_training)
    return tally


def _score_batch(model, batch: list[Window], token_bytes: torch.Tensor, tally: Tally, device, autocast) -> None:
    length = max(len(w) for w, _ in batch) - 1
    x = np.zeros((len(batch), length), dtype=np.int64)
    y = np.full((len(batch), length), IGNORE, dtype=np.int64)
    for i, (w, counted) in enumerate(batch):
        n = len(w) - 1
        x[i, :n] = w[:-1]
        y[i, n - counted : n] = w[n + 1 - counted :]
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    with autocast or nullcontext():
        _, nats = model(xt, yt, reduction="none")
    counted = yt != IGNORE
    tally.nats += float(nats.double().sum())
    tally.tokens += int(counted.sum())
    tally.bytes += int(token_bytes[yt[counted]].sum())


def score_source(model, tokenizer, token_bytes: torch.Tensor, source: str, scope: str, definition: str = "documents",
                 seed: int = 0, batch_size: int = 8, autocast=None, progress=None) -> dict:
    """Loss, perplexity and bits per byte of `model` on a source's text (scope "whole" or "held-out"), by the
    "documents" or the "stream" definition; also how many documents, tokens and bytes were scored."""
    from homegpt.data.tokenizer import EOT

    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")
    windows = {"documents": document_windows, "stream": stream_windows}[definition]
    tally = Tally()
    pieces = encode_pieces(source_pieces(source, SCOPES[scope], seed), tokenizer)
    eot = tokenizer.token_to_id(EOT)
    score_windows(model, windows(pieces, model.config.block_size, eot, tally), token_bytes, tally, batch_size,
                  autocast, progress)
    if tally.tokens == 0:
        raise UserError(f"{source} holds no {'held-out ' if scope == 'held-out' else ''}text to score: give it text"
                        + (" or score it --whole" if scope == "held-out" else ""))
    return tally.metrics()


def count_tokens(source: str, tokenizer, split: str | None = "train", seed: int = 0) -> dict:
    """Documents, UTF-8 bytes and tokens of a source's split (None: all of it), streamed; tokens include one
    <|endoftext|> per document, as prepare packs them."""
    counts = {"documents": 0, "tokens": 0, "bytes": 0}

    def counted(pieces: Iterator[tuple[str, bool, bool]]) -> Iterator[tuple[str, bool, bool]]:
        for piece in pieces:
            counts["bytes"] += len(piece[0].encode("utf-8"))
            yield piece

    for piece in encode_pieces(counted(source_pieces(source, split, seed)), tokenizer):
        counts["tokens"] += len(piece.ids) + piece.last
        counts["documents"] += piece.last
    return counts
