"""Splitting an evaluation corpus between processes and gathering what each computed, in corpus order.

Process `rank` of `world_size` takes the contiguous block `[n * rank // world_size, n * (rank + 1) // world_size)`
of a corpus of `n` samples, so concatenating the blocks in rank order gives the corpus order back: gathered
features, texts and captions line up exactly as a single process would have produced them. Tensors are gathered
with `torch.distributed.all_gather` (padded to the largest block, then cut back), Python objects with
`all_gather_object`; without an initialised multi-process group everything is the identity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ..modeling_valor import ValorFeatures

T = TypeVar("T")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@dataclass(frozen=True)
class ProcessShare:
    """One process's place in a split: its `rank` and the `world_size`."""

    rank: int = 0
    world_size: int = 1

    def __post_init__(self):
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"Need 0 <= rank < world_size, got rank {self.rank} and world_size {self.world_size}."
            )

    @classmethod
    def current(cls) -> ProcessShare:
        """This process's share in the initialised process group (rank 0 of 1 without one)."""
        return cls(dist.get_rank(), dist.get_world_size()) if _distributed() else cls()

    def block(self, count: int) -> range:
        """The positions of this process's contiguous block of `count` samples."""
        return range(count * self.rank // self.world_size, count * (self.rank + 1) // self.world_size)


def gather_objects(values: Sequence[T]) -> list[T]:
    """The concatenation, in rank order, of every process's list `values` (picklable, small: ids, texts)."""
    if not _distributed():
        return list(values)
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(values))
    return [value for part in parts for value in part]


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's `tensor` concatenated along the first axis in rank order (the blocks may differ in size;
    the other dimensions must agree)."""
    if not _distributed():
        return tensor
    sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([tensor.shape[0]], device=tensor.device))
    largest = int(max(s.item() for s in sizes))
    padded = tensor.new_zeros((largest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[: int(size.item())] for part, size in zip(parts, sizes)])


def gather_features(features: ValorFeatures) -> ValorFeatures:
    """Every process's block of MGA features concatenated in rank order (each field that is set)."""
    values = {f.name: getattr(features, f.name) for f in dataclasses.fields(features)}
    return ValorFeatures(**{name: gather_rows(value) for name, value in values.items() if value is not None})
