"""Resizing of ViT position-embedding grids, shared by the checkpoint converter and the encoder initialisation.

A ViT position table holds a few leading (CLS-like) positions followed by a row-major `H x W` patch grid. When
a tower runs at another resolution than it was trained at (CLIP's 336-px weights at 224 px, AST's 12 x 101
AudioSet grid on VALOR's 4 x 32 audio input), the grid is resized bilinearly and the leading positions kept.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .report import ConversionError


def resize_position_grid(
    positions: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    prefix: int = 1,
) -> torch.Tensor:
    """
    Bilinearly resize a ViT position table `(prefix + H*W, C)` (row-major grid) to `(prefix + H'*W', C)`,
    keeping the first `prefix` (CLS-like) positions.

    The interpolation runs in float32 with `align_corners=False` and the result is cast back to the input
    dtype; when the grid already has the requested size the table is returned unchanged.

    Args:
        positions (`torch.Tensor` of shape `(prefix + H*W, C)`): the position table.
        new_grid (`tuple[int, int]`): the target grid `(H', W')`.
        old_grid (`tuple[int, int]`, *optional*): the grid `(H, W)` of `positions`; by default the square grid
            that fits the table.
        prefix (`int`, defaults to 1): number of leading positions that are not part of the grid.

    Raises:
        `ConversionError`: when `old_grid` does not fit the number of grid positions.
    """
    num_tokens, width = positions.shape
    if old_grid is None:
        side = math.isqrt(num_tokens - prefix)
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != num_tokens - prefix:
        raise ConversionError(f"A {old_grid} grid does not fit {num_tokens - prefix} position embeddings.")
    if tuple(old_grid) == tuple(new_grid):
        return positions
    grid = positions[prefix:].reshape(*old_grid, width).permute(2, 0, 1)[None]  # (1, C, H, W)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode="bilinear", align_corners=False)
    grid = grid[0].permute(1, 2, 0).reshape(-1, width).to(positions.dtype)  # (H'*W', C)
    return torch.cat([positions[:prefix], grid], dim=0)
