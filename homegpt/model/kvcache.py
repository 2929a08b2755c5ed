"""The key/value cache that generation runs on: one slot per row, each row with its own length.

    keys, values: (n_layer, rows, n_head, capacity, head_dim), preallocated
    lengths[b]:   how many positions row b holds

Row b's token in slot j sits at position j, so every row's positions are 0, 1, 2, ... exactly as if it ran
alone, whatever the other rows hold, and a row attends to its own slots 0..its position only: keys past a
row's length (a previous occupant's, or zeros) are masked out. That is what lets rows of different lengths
share one forward pass, and rows join and leave a running batch (continuous batching, engine.py): a new row
is prefilled alone through `rows(b, b + 1)`, a view onto its slot, while the others wait; a step then runs
every busy row at once. `move` copies a row into another slot, so the busy rows can be kept packed at the
front and a step never computes idle rows.

A forward pass (GPT.hidden) appends the same number of tokens T to every row of the cache it is given:
`begin(T)` gives the chunk's positions and attention mask, each layer's `append` stores its keys and values
and returns the row's keys and values so far, and `advance(T)` moves the lengths on. When every row has the
same length (a lone row, or a batch that started together) the writes are plain slices and attention needs
no mask (or just a causal one); otherwise each row writes at its own length and attends under a per-row mask.
The tensors are allocated on first use, in the dtype the projections produce (autocast), and zeroed, so a
masked key is never NaN.
"""

from __future__ import annotations

import torch

from homegpt.errors import UserError


class _Storage:
    """What a cache and its row views share: the tensors and every row's length."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.lengths = [0] * shape[1]

    def ensure(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is None:
            self.k = torch.zeros(self.shape, dtype=like.dtype, device=like.device)
            self.v = torch.zeros(self.shape, dtype=like.dtype, device=like.device)
        return self.k, self.v


class KVCache:
    """Keys and values of every layer for `batch` rows, each row with its own length (see the module doc)."""

    def __init__(self, cfg, batch: int, capacity: int, device, _storage: _Storage | None = None,
                 _rows: tuple[int, int] | None = None) -> None:
        self.capacity = capacity
        self.device = torch.device(device)
        self._storage = _storage or _Storage((cfg.n_layer, batch, cfg.n_head, capacity, cfg.head_dim))
        self.start, self.stop = _rows or (0, batch)
        self._cfg = cfg
        self.mask: tuple[torch.Tensor | None, bool] = (None, False)  # the current chunk's, set by begin()
        self._chunk: tuple[int | None, torch.Tensor, int] = (None, torch.empty(0), 0)  # (common length, positions, end)

    # ------------------------------------------------------------------ rows

    @property
    def batch(self) -> int:
        return self.stop - self.start

    @property
    def lengths(self) -> list[int]:
        return self._storage.lengths[self.start : self.stop]

    @property
    def longest(self) -> int:
        return max(self.lengths, default=0)

    def rows(self, start: int, stop: int) -> KVCache:
        """A view onto rows start..stop-1 of this cache: the same tensors and lengths."""
        if not 0 <= start < stop <= self.batch:
            raise ValueError(f"rows {start}..{stop} outside a cache of {self.batch} rows")
        return KVCache(self._cfg, 0, self.capacity, self.device, self._storage,
                       (self.start + start, self.start + stop))

    def clear(self, row: int) -> None:
        """Row `row` holds nothing (its old keys stay in place, masked, until overwritten)."""
        self._storage.lengths[self.start + row] = 0

    def move(self, src: int, dst: int) -> None:
        """Copy row src's keys, values and length into row dst (src is left as it was)."""
        s, d = self.start + src, self.start + dst
        n = self._storage.lengths[s]
        if self._storage.k is not None and n:
            self._storage.k[:, d, :, :n] = self._storage.k[:, s, :, :n]
            self._storage.v[:, d, :, :n] = self._storage.v[:, s, :, :n]
        self._storage.lengths[d] = n

    # ------------------------------------------------------------------ one forward pass

    def begin(self, t: int) -> torch.Tensor:
        """Start a chunk of t new tokens per row: their positions, (B, t) or (1, t), and the attention mask."""
        lengths = self.lengths
        end = max(lengths) + t
        if end > self.capacity:
            raise UserError(f"the key/value cache holds {self.capacity} positions, a row would need {end}: "
                            f"lower max_new_tokens")
        steps = torch.arange(t, device=self.device)
        if min(lengths) == end - t:  # every row at the same length: slices, and no per-row mask
            common = end - t
            positions = (steps + common)[None]
            if t == 1:
                self.mask = (None, False)  # one new token attends to everything before it
            elif common == 0:
                self.mask = (None, True)
            else:
                self.mask = (torch.ones(t, end, dtype=torch.bool, device=self.device).tril(diagonal=common), False)
            self._chunk = (common, positions, end)
            return positions
        positions = torch.tensor(lengths, device=self.device)[:, None] + steps  # (B, t)
        keys = torch.arange(end, device=self.device)
        self.mask = ((keys[None, None, :] <= positions[:, :, None])[:, None], False)  # (B, 1, t, end)
        self._chunk = (None, positions, end)
        return positions

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store a layer's keys and values (B, n_head, t, head_dim) after each row's filled slots; return
        (B, n_head, end, head_dim) views of every row's keys and values up to the chunk's longest row."""
        ks, vs = self._storage.ensure(k)
        common, positions, end = self._chunk
        rows = slice(self.start, self.stop)
        if common is not None:
            ks[layer, rows, :, common:end] = k
            vs[layer, rows, :, common:end] = v
        else:  # each row at its own slots: advanced indexing gives (B, t, n_head, head_dim)
            r = torch.arange(self.start, self.stop, device=self.device)[:, None]
            ks[layer][r, :, positions] = k.transpose(1, 2)
            vs[layer][r, :, positions] = v.transpose(1, 2)
        return ks[layer, rows, :, :end], vs[layer, rows, :, :end]

    def advance(self, t: int) -> None:
        for b in range(self.start, self.stop):
            self._storage.lengths[b] += t
