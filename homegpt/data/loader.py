"""Training batches from memory-mapped shards: random windows or sequential order, per seed and per rank.

Every optimizer step takes accum x world x micro_batch windows of block_size + 1 tokens, laid out as
[accum][world][micro_batch]; rank r keeps its [:, r] share. So a step holds the same windows whatever the
number of ranks, and each rank's share is a pure function of (seed, step, rank).

    random      the step's windows start at offsets drawn from one torch generator seeded with `seed` (the
                draw train.Loader makes, so its checkpoints' generator states load here unchanged)
    sequential  consecutive non-overlapping windows in corpus order (window w starts at token w * block_size),
                the step after the previous one's, wrapping around after the last whole window (an epoch):
                no window is read twice in an epoch, by any rank

state_dict() is JSON-able (for a checkpoint's state.json); load_state_dict() restores the exact position, so a
resumed run draws the same batches as an uninterrupted one.
"""

from __future__ import annotations

import base64

import numpy as np
import torch

from homegpt.errors import UserError

ORDERS = ("random", "sequential")


class TokenLoader:
    def __init__(self, tokens, block_size: int, micro_batch: int, accum: int, seed: int,
                 device: torch.device | str = "cpu", rank: int = 0, world: int = 1, order: str = "random") -> None:
        if order not in ORDERS:
            raise UserError(f"unknown data order {order!r}: use random or sequential")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, {world})")
        if len(tokens) < block_size + 2:
            raise UserError(
                f"the training split has {len(tokens)} tokens, fewer than one window of {block_size + 1}: "
                f"lower block_size or give more text"
            )
        self.tokens, self.block, self.micro, self.accum = tokens, block_size, micro_batch, accum
        self.device, self.rank, self.world, self.order = torch.device(device), rank, world, order
        self.gen = torch.Generator().manual_seed(seed)
        self.step = 0  # optimizer steps drawn so far
        self.windows = (len(tokens) - 1) // block_size  # whole windows of block_size + 1 tokens

    def step_starts(self) -> torch.Tensor:
        """Token offsets of this rank's windows for the next step, shape (accum, micro_batch); advances."""
        n = self.accum * self.world * self.micro
        if self.order == "random":
            starts = torch.randint(0, len(self.tokens) - self.block - 1, (n,), generator=self.gen)
        else:
            first = self.step * n
            starts = (torch.arange(first, first + n, dtype=torch.int64) % self.windows) * self.block
        self.step += 1
        return starts.view(self.accum, self.world, self.micro)[:, self.rank]

    def next_step(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's `accum` micro-batches (x, y) for one optimizer step."""
        return [self._batch(row.tolist()) for row in self.step_starts()]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One step's only micro-batch (accum must be 1)."""
        if self.accum != 1:
            raise ValueError("next() is for accum == 1: use next_step()")
        return self.next_step()[0]

    def _batch(self, starts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.stack([np.asarray(self.tokens[s:s + self.block + 1], dtype=np.int64) for s in starts])
        batch = torch.from_numpy(rows)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        else:
            batch = batch.to(self.device)
        return batch[:, :-1], batch[:, 1:]

    def state_dict(self) -> dict:
        """The position as JSON-able values: the layout, the steps drawn and the generator state."""
        return {"order": self.order, "windows_per_step": self.accum * self.world * self.micro,
                "block_size": self.block, "step": self.step, "world": self.world,
                "generator": base64.b64encode(self.gen.get_state().numpy().tobytes()).decode("ascii")}

    def load_state_dict(self, state: dict | torch.Tensor) -> None:
        """Restore a state_dict(), or a bare generator state (what train.Loader's checkpoints hold)."""
        if isinstance(state, torch.Tensor):
            if self.order != "random":
                raise UserError("this checkpoint has a random-order loader state: resume with random order")
            self.gen.set_state(state)
            return
        # the same windows per step is enough: how they are shared among ranks and micro-batches may change
        mine = {"order": self.order, "windows_per_step": self.accum * self.world * self.micro,
                "block_size": self.block}
        changed = [f"{k} {state.get(k)} -> {v}" for k, v in mine.items() if state.get(k) != v]
        if changed:
            raise UserError(f"the checkpoint's data loader does not match this run ({', '.join(changed)}): "
                            f"resume with the same settings")
        self.step = int(state["step"])
        raw = np.frombuffer(base64.b64decode(state["generator"]), dtype=np.uint8).copy()
        self.gen.set_state(torch.from_numpy(raw))
