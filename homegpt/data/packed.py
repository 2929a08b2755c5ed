"""Packed conversations: what `homegpt sft` trains on, and what training reads besides `prepare`'s token shards.

A folder of packed conversations is a prepared data folder (manifest.json, tokenizer.json, token shards
checked as every shard is) with "kind": "conversations" and, beside each token shard, a loss-mask shard of
the same length (one byte per token: 1 where the token carries loss). The tokens are rows of
row_tokens = block_size + 1: a row holds whole conversations (conversations.py renders and masks them),
packed best-fit without ever cutting one (Packer), the rest of the row <|endoftext|> padding that carries no
loss. A conversation longer than a row is dropped, or with too_long = "cut" cut to the row (kept if some of
its answer is left); both are counted in the manifest and the log.

PackedLoader gives training the same (x, y) micro-batches as loader.TokenLoader, with y = IGNORE_INDEX
wherever the mask is 0, and the same layout per step and rank ([accum][world][micro_batch], rank r keeps
[:, r]). Row order: "random" goes through the rows in a seeded permutation per epoch (epoch e's permutation
is a pure function of (seed, e)), "sequential" in order; the position is the step alone, saved in every
checkpoint, so a resumed run draws exactly the rows an uninterrupted one would.

The held-out conversations are scored on their loss tokens only (train/heldout.py's evaluate_rows): mean
nats per assistant token, perplexity, and bits per byte of those tokens' text.

The functions at the end (check_data, training_loader) are what train/session.py calls for any prepared folder:
token shards go to their usual code.
"""

from __future__ import annotations

import bisect
import shutil
from pathlib import Path

import numpy as np
import torch

from homegpt.data.shards import ShardedTokens, SplitWriter, check_prepared, check_shard, open_split, scan_shard
from homegpt.errors import UserError
from homegpt.model.gpt import IGNORE_INDEX

KIND = "conversations"
TOO_LONG = ("drop", "cut")
PACK_WINDOW = 4096  # conversations packed together (best fit): bounds memory, wastes little
SHARD_ROWS_TOKENS = 1 << 26  # about this many tokens per shard, rounded down to whole rows


class Packer:
    """Whole conversations into rows of row_tokens, best fit decreasing within windows of PACK_WINDOW."""

    def __init__(self, row_tokens: int, pad_id: int, too_long: str = "drop") -> None:
        if too_long not in TOO_LONG:
            raise UserError(f"too_long must be drop or cut, got {too_long!r}")
        self.row, self.pad, self.too_long = row_tokens, pad_id, too_long
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.counts = {"conversations": 0, "dropped_too_long": 0, "cut_too_long": 0, "rows": 0, "loss_tokens": 0,
                       "conversation_tokens": 0}

    def add(self, ids: np.ndarray, mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Take one conversation; returns the rows completed (a window's worth at a time)."""
        if len(ids) > self.row:
            if self.too_long == "drop":
                self.counts["dropped_too_long"] += 1
                return []
            ids, mask = ids[: self.row], mask[: self.row]
            if not mask.any():  # nothing of the answer fits: nothing to learn
                self.counts["dropped_too_long"] += 1
                return []
            self.counts["cut_too_long"] += 1
        self.pending.append((ids, mask))
        return self.flush() if len(self.pending) >= PACK_WINDOW else []

    def flush(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Pack what is pending into rows: each conversation, longest first, into the fullest row it fits."""
        order = sorted(range(len(self.pending)), key=lambda i: (-len(self.pending[i][0]), i))
        rows: list[list[int]] = []
        free: list[tuple[int, int]] = []  # (space left, row index), sorted
        for i in order:
            n = len(self.pending[i][0])
            at = bisect.bisect_left(free, (n, -1))
            if at < len(free):
                space, r = free.pop(at)
            else:
                space, r = self.row, len(rows)
                rows.append([])
            rows[r].append(i)
            bisect.insort(free, (space - n, r))
        out = [self._row([self.pending[i] for i in members]) for members in rows]
        self.counts["conversations"] += len(self.pending)
        self.counts["conversation_tokens"] += sum(len(ids) for ids, _ in self.pending)
        self.counts["rows"] += len(out)
        self.counts["loss_tokens"] += sum(int(m.sum()) for _, m in self.pending)
        self.pending = []
        return out

    def _row(self, parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        ids = np.full(self.row, self.pad, np.int64)
        mask = np.zeros(self.row, np.uint8)
        pos = 0
        for a, m in parts:
            ids[pos:pos + len(a)], mask[pos:pos + len(a)] = a, m
            pos += len(a)
        return ids, mask


class RowWriter:
    """A split's rows as token shards (train-00000.bin, ...) and mask shards (train-mask-00000.bin, ...)."""

    def __init__(self, out: Path, split: str, dtype: np.dtype, row_tokens: int) -> None:
        shard = max(1, SHARD_ROWS_TOKENS // row_tokens) * row_tokens
        self.tokens = SplitWriter(out, split, dtype, shard)
        self.masks = SplitWriter(out, f"{split}-mask", np.dtype(np.uint8), shard)
        self.rows = 0

    def write(self, rows: list[tuple[np.ndarray, np.ndarray]]) -> None:
        if rows:
            self.tokens.write(np.concatenate([ids for ids, _ in rows]))
            self.masks.write(np.concatenate([m for _, m in rows]))
            self.rows += len(rows)

    def close(self) -> dict:
        self.tokens.close()
        self.masks.close()
        n = sum(s["tokens"] for s in self.tokens.shards)
        return {"tokens": n, "rows": self.rows, "shards": self.tokens.shards, "mask_shards": self.masks.shards}

    def abandon(self) -> None:
        self.tokens.abandon()
        self.masks.abandon()


# --------------------------------------------------------------------------------------------- reading


def is_packed(manifest: dict) -> bool:
    return manifest.get("kind") == KIND


def _mask_manifest(manifest: dict, split: str) -> dict:
    return {"dtype": "uint8", "splits": {split: {"shards": manifest["splits"][split]["mask_shards"]}}}


def check_masks(data_dir: str | Path, manifest: dict) -> None:
    """Every mask shard: its size, its SHA-256 and only 0s and 1s in it."""
    d = Path(data_dir)
    for split in ("train", "val"):
        for shard in manifest["splits"][split]["mask_shards"]:
            try:
                scan_shard(d / shard["file"], shard, np.dtype(np.uint8), 2)
            except UserError:
                raise UserError(f"{d / shard['file']} (a loss mask) is missing, truncated or corrupted: pack the "
                                f"conversations again (homegpt sft ... --force)") from None


class PackedRows:
    """A split's rows: tokens and masks over memory-mapped shards. len() counts tokens, as for token shards."""

    def __init__(self, data_dir: str | Path, split: str, manifest: dict) -> None:
        self.row = int(manifest["row_tokens"])
        self.tokens = open_split(data_dir, split, manifest)
        for shard in manifest["splits"][split]["mask_shards"]:
            check_shard(Path(data_dir) / shard["file"], shard, np.dtype(np.uint8), verify=False)
        self.mask: ShardedTokens = open_split(data_dir, split, _mask_manifest(manifest, split))
        self.rows = len(self.tokens) // self.row

    def __len__(self) -> int:
        return self.rows * self.row

    def batch(self, rows: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, y, loss mask of y) of these rows: (B, row_tokens - 1) each."""
        ids = np.stack([np.asarray(self.tokens[r * self.row:(r + 1) * self.row], dtype=np.int64) for r in rows])
        mask = np.stack([np.asarray(self.mask[r * self.row:(r + 1) * self.row], dtype=bool) for r in rows])
        t, m = torch.from_numpy(ids), torch.from_numpy(mask)
        if device.type == "cuda":
            t, m = t.pin_memory().to(device, non_blocking=True), m.pin_memory().to(device, non_blocking=True)
        else:
            t, m = t.to(device), m.to(device)
        return t[:, :-1], t[:, 1:], m[:, 1:]


class PackedLoader:
    """Training micro-batches of packed rows, y masked with IGNORE_INDEX (see the module doc)."""

    def __init__(self, rows: PackedRows, micro_batch: int, accum: int, seed: int, device: torch.device | str = "cpu",
                 rank: int = 0, world: int = 1, order: str = "random") -> None:
        if order not in ("random", "sequential"):
            raise UserError(f"unknown data order {order!r}: use random or sequential")
        if rows.rows < 1:
            raise UserError("no training conversation fits the model's context: give shorter conversations")
        self.data, self.micro, self.accum, self.seed = rows, micro_batch, accum, seed
        self.device, self.rank, self.world, self.order = torch.device(device), rank, world, order
        self.gen = torch.Generator().manual_seed(seed)  # a checkpoint saves a loader generator: this one
        self.step = 0
        self._epoch, self._perm = -1, None

    @property
    def per_step(self) -> int:
        return self.accum * self.world * self.micro

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._epoch != epoch:
            n = self.data.rows
            if self.order == "sequential":
                self._perm = torch.arange(n)
            else:
                gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (1 << 63))
                self._perm = torch.randperm(n, generator=gen)
            self._epoch = epoch
        return self._perm

    def step_rows(self) -> torch.Tensor:
        """Row indices of this rank's windows for the next step, shape (accum, micro_batch); advances."""
        n, total = self.per_step, self.data.rows
        picked = [int(self.permutation(p // total)[p % total]) for p in range(self.step * n, self.step * n + n)]
        self.step += 1
        return torch.tensor(picked).view(self.accum, self.world, self.micro)[:, self.rank]

    def next_step(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for row in self.step_rows():
            x, y, keep = self.data.batch(row.tolist(), self.device)
            out.append((x, y.masked_fill(~keep, IGNORE_INDEX)))
        return out

    def state_dict(self) -> dict:
        return {"kind": KIND, "order": self.order, "rows_per_step": self.per_step, "step": self.step}

    def load_state_dict(self, state) -> None:
        if not isinstance(state, dict) or state.get("kind") != KIND:
            raise UserError("this checkpoint's data loader read token shards, not packed conversations: resume "
                            "it with the data it was trained on")
        mine = {"order": self.order, "rows_per_step": self.per_step}
        changed = [f"{k} {state[k]} -> {v}" for k, v in mine.items() if k in state and state[k] != v]
        if changed:
            raise UserError(f"the checkpoint's data loader does not match this run ({', '.join(changed)}): "
                            f"resume with the same settings")
        self.step = int(state["step"])


# --------------------------------------------------------------------------------------------- any data


def check_data(data_dir: str | Path, manifest: dict) -> dict:
    """What training checks before it starts: every token shard, and packed conversations' masks too."""
    checked = check_prepared(data_dir, manifest)
    if is_packed(manifest):
        check_masks(data_dir, manifest)
    return checked


def training_loader(data_dir: str | Path, manifest: dict, block_size: int, micro: int, accum: int, seed: int,
                    device, rank: int, world: int, order: str):
    """The loader training draws its batches from: TokenLoader over token shards, PackedLoader over packed
    conversations (whose rows must be the model's context + 1)."""
    if not is_packed(manifest):
        from homegpt.data.loader import TokenLoader

        return TokenLoader(open_split(data_dir, "train", manifest), block_size, micro, accum, seed, device,
                           rank=rank, world=world, order=order)
    if int(manifest["row_tokens"]) != block_size + 1:
        raise UserError(f"{data_dir} packs rows of {manifest['row_tokens']} tokens, for a context of "
                        f"{int(manifest['row_tokens']) - 1}; this model's is {block_size}: use the run's block_size")
    return PackedLoader(PackedRows(data_dir, "train", manifest), micro, accum, seed, device, rank, world, order)


# --------------------------------------------------------------------------------------------- writing


def write_packed(source: str, tok_path: Path, out: Path, model_vocab: int, row_tokens: int, too_long: str = "drop",
                 log=None, seed: int = 0) -> dict:
    """Read, check, render, mask and pack every conversation of `source` into `out` (shards and manifest).

    One conversation in VAL_EVERY is held out (a seeded hash of its position; of fewer, the last one). A bad
    row is a UserError naming it; what was written to `out` is then left for the caller to discard.
    """
    from tokenizers import Tokenizer

    from homegpt.data.conversations import encode, has_special_text, iter_conversations
    from homegpt.data.prepare import token_dtype
    from homegpt.data.shards import file_sha256, fsync_dir, write_json_atomic
    from homegpt.data.sources import VAL_EVERY, as_source, is_val
    from homegpt.data.tokenizer import EOT

    log = log or (lambda msg: None)
    tok = Tokenizer.from_file(str(tok_path))
    eot, dtype = tok.token_to_id(EOT), token_dtype(model_vocab)
    packers = {s: Packer(row_tokens, eot, too_long) for s in ("train", "val")}
    writers = {s: RowWriter(out, s, dtype, row_tokens) for s in ("train", "val")}
    special, index, batch = 0, 0, []
    head: list | None = []  # the first VAL_EVERY conversations: of fewer, only the last one is held out

    def place(item: tuple[int, np.ndarray, np.ndarray], split: str) -> None:
        writers[split].write(packers[split].add(item[1], item[2]))

    def take(items: list[tuple[int, list[dict]]]) -> None:
        nonlocal head
        for (i, _), (ids, mask) in zip(items, encode(tok, [m for _, m in items]), strict=True):
            if head is None:
                place((i, ids, mask), "val" if is_val(i, seed) else "train")
                continue
            head.append((i, ids, mask))
            if len(head) == VAL_EVERY:
                for item in head:
                    place(item, "val" if is_val(item[0], seed) else "train")
                head = None

    try:
        for _, messages in iter_conversations(source):
            if has_special_text(messages):
                special += 1
                continue
            batch.append((index, messages))
            index += 1
            if len(batch) >= 1024:
                take(batch)
                batch = []
        if index < 2:
            raise UserError(f"{source} holds {'no' if index == 0 else 'only one'} usable conversation"
                            f"{'s' if index == 0 else ''}: give at least two (one is held out)")
        take(batch)
        for n, item in enumerate(head or []):
            place(item, "val" if n == len(head) - 1 else "train")
        for s in packers:
            writers[s].write(packers[s].flush())
        splits = {s: dict(writers[s].close(), documents=packers[s].counts["conversations"],
                          loss_tokens=packers[s].counts["loss_tokens"],
                          conversation_tokens=packers[s].counts["conversation_tokens"]) for s in writers}
    except BaseException:
        for w in writers.values():
            w.abandon()
        raise
    for s in ("train", "val"):
        if splits[s]["rows"] < 1:
            raise UserError(f"no {'training' if s == 'train' else 'held-out'} conversation of {source} fits the "
                            f"model's context of {row_tokens - 1} tokens: give shorter conversations"
                            + ("" if too_long == "cut" else " or --too-long cut"))
    shutil.copyfile(tok_path, out / "tokenizer.json")
    dropped = sum(p.counts["dropped_too_long"] for p in packers.values())
    cut = sum(p.counts["cut_too_long"] for p in packers.values())
    manifest = {
        "version": 1, "kind": KIND, "source": as_source(source).spec,
        "tokenizer_sha256": file_sha256(out / "tokenizer.json"), "vocab_size": tok.get_vocab_size(),
        "model_vocab_size": model_vocab, "eot_id": eot, "dtype": dtype.name, "row_tokens": row_tokens,
        "splits": splits, "seed": seed, "val_every": VAL_EVERY, "too_long": too_long,
        "dropped_too_long": dropped, "cut_too_long": cut, "dropped_special_text": special,
    }
    write_json_atomic(out / "manifest.json", manifest)
    fsync_dir(out)
    t = splits["train"]
    log(f"conversations: {index:,} read from {manifest['source']}, {splits['val']['documents']:,} held out; "
        f"{t['rows']:,} training rows of {row_tokens} tokens, {t['conversation_tokens'] / max(1, t['tokens']):.0%} "
        f"filled, {t['loss_tokens']:,} tokens with loss; longer than the context: {dropped:,} dropped, {cut:,} cut"
        + (f"; {special:,} dropped for holding a special token's text" if special else ""))
    return manifest
