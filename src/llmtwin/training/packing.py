"""Sequence packing for continual pre-training: documents → fixed-capacity blocks, best-fit decreasing.

Each document's tokens get an EOS separator, long documents are cut into block-sized pieces, and
pieces are placed largest first into the block with the least room that still fits them (so few
blocks are left part-empty and no piece is split further). A block remembers its segment lengths,
from which the collator builds per-document position_ids: transformers then attends only within
a segment (a block-diagonal causal mask), so no token sees another document.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass
class Block:
    input_ids: list[int]
    lengths: list[int]  # segment (document piece) lengths, in order; sum == len(input_ids)


def split_documents(docs: list[list[int]], eos_id: int, block_size: int) -> list[list[int]]:
    """Each document + EOS, cut into pieces of at most block_size tokens (empty documents dropped)."""
    pieces = []
    for ids in docs:
        if not ids:
            continue
        seq = list(ids) + [eos_id]
        pieces.extend(seq[i : i + block_size] for i in range(0, len(seq), block_size))
    return pieces


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of `capacity`: longest first, each into the fullest bin it fits."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), sorted
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"piece of {n} tokens does not fit a block of {capacity}")
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            room, b = free.pop(at)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        if room - n > 0:
            bisect.insort(free, (room - n, b))
    return bins


def pack_documents(docs: list[list[int]], eos_id: int, block_size: int) -> list[Block]:
    pieces = split_documents(docs, eos_id, block_size)
    blocks = []
    for members in best_fit_decreasing([len(p) for p in pieces], block_size):
        members.sort()  # keep corpus order inside a block
        blocks.append(Block([t for m in members for t in pieces[m]], [len(pieces[m]) for m in members]))
    return blocks


def collate_blocks(rows: list[dict], pad_id: int, separate: bool = True) -> dict:
    """A batch of blocks → input_ids, position_ids, labels (no attention_mask: the positions define the segments).

    separate=True: positions restart at every segment and the first token of a segment is not a
    target (nothing is predicted across a boundary). separate=False: one position run per block,
    documents told apart only by their EOS separators. Padding is its own segment, never a target.
    """
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    ids, pos, labels = [], [], []
    for r in rows:
        seq = list(r["input_ids"])
        segs = list(r["lengths"]) if separate else [len(seq)]
        p, lab = [], list(seq)
        start = 0
        for n in segs:
            p.extend(range(n))
            if separate:
                lab[start] = -100
            start += n
        pad = width - len(seq)
        ids.append(seq + [pad_id] * pad)
        pos.append(p + list(range(pad)))
        labels.append(lab + [-100] * pad)
    return {"input_ids": torch.tensor(ids), "position_ids": torch.tensor(pos), "labels": torch.tensor(labels)}
