"""The encoding side of prepare: chunks of text go out to encoder processes, token ids come back in order.

Encoding is the expensive step, so it runs in `workers` processes (fastenc.encode_chunk, one core each);
the main process only reads and writes. At most `in_flight` chunks are out at a time, submitted and not yet
taken back: the memory plan (prepare.plan_memory) counts exactly that many chunks of text and ids alive.
Results are taken back in the order the chunks went out, whatever order the workers finish in, so what
follows sees the corpus in order. With one worker the chunks are encoded here, in this process: starting a
pool costs more than it saves on small inputs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from homegpt.data.fastenc import Encoder, EncoderMismatch, encode_chunk, init_worker
from homegpt.errors import UserError

if TYPE_CHECKING:
    from homegpt.data.chunks import Chunk

SPOT_CHECK_EVERY = 16  # chunk 0 and every 16th chunk: a few samples are re-encoded with tokenizers


class _Inline:
    """The result of a chunk encoded in this process (workers=1), shaped like a Future."""

    def __init__(self, value) -> None:
        self.value = value

    def result(self):
        return self.value


class EncoderPool:
    """`workers` encoder processes (or this process, for one) that encode chunks in corpus order, with at most
    `in_flight` chunks out at a time. Use it as a context manager: leaving it stops the workers."""

    def __init__(self, tok_file: Path, kind: str, dtype: np.dtype, eot: int, workers: int, in_flight: int) -> None:
        self.workers, self.in_flight = workers, in_flight
        self.pool = None
        args = (str(tok_file), kind, dtype.name, eot)
        if workers > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # spawn: workers start clean (no copied threads or locks from the reader's libraries); an executor,
            # not a Pool, because a worker that dies (killed, out of memory) fails the run instead of hanging it
            self.pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=init_worker,
                                            initargs=args)
        else:
            self.encoder = Encoder(*args)

    def __enter__(self) -> EncoderPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def encoded(self, source_chunks: Iterable[Chunk]) -> Iterator[tuple[Chunk, np.ndarray, np.ndarray, np.ndarray]]:
        """(chunk, tokens, tokens per piece, UTF-8 bytes per piece) for each chunk, in the order given. A chunk's
        texts are dropped once it is sent (the worker has its own copy); the next chunk is read only when
        fewer than in_flight are out."""
        pending: deque = deque()
        for chunk in source_chunks:
            pending.append((chunk, self._submit(chunk)))
            chunk.texts = None  # sent: the worker has its own copy
            while len(pending) >= self.in_flight:
                yield self._result(*pending.popleft())
        while pending:
            yield self._result(*pending.popleft())

    def _submit(self, chunk: Chunk):
        check = chunk.index % SPOT_CHECK_EVERY == 0
        if self.pool is None:
            return _Inline(encode_chunk(chunk.texts, chunk.ends, check, self.encoder))
        return self.pool.submit(encode_chunk, chunk.texts, chunk.ends, check)

    @staticmethod
    def _result(chunk: Chunk, future) -> tuple[Chunk, np.ndarray, np.ndarray, np.ndarray]:
        from concurrent.futures.process import BrokenProcessPool

        try:
            tokens, counts, nbytes = future.result()
        except BrokenProcessPool:
            raise UserError("an encoder worker process died (out of memory, or killed): rerun to resume, with "
                            "fewer --workers or a smaller --memory-mb") from None
        except EncoderMismatch:
            raise UserError(f"the fast encoder (tiktoken) gave other ids than tokenizers in chunk {chunk.index}: "
                            f"rerun with --force --encoder hf (and please report it)") from None
        return chunk, tokens, counts, nbytes

    def close(self) -> None:
        """Stop the workers now: chunks still out are cancelled (a stopped or failed run needs none of them)."""
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None
