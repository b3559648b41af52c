"""Tests of `transformers_valor.conversion.position_grid.resize_position_grid`, the one position-grid resize used by
the checkpoint converter (CLIP grids) and the encoder initialisation (CLIP and AST grids)."""

import pytest
import torch
from transformers import ASTConfig, ASTModel, CLIPVisionConfig, CLIPVisionModel

from transformers_valor.conversion import ConversionError, resize_position_grid
from transformers_valor.conversion.from_encoders import (
    ast_patch_grid,
    convert_ast_state_dict,
    convert_clip_vision_state_dict,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# Bilinear, align_corners=False, 2 -> 4 samples: source coordinates -0.25, 0.25, 0.75, 1.25, clamped to [0, 1].
UPSAMPLED_COORDS = torch.tensor([0.0, 0.25, 0.75, 1.0])


def _table(tokens, width=12, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(tokens, width, generator=generator).to(dtype)


def _ramp_table(prefix: int, rows: int, cols: int, dtype=torch.float32) -> torch.Tensor:
    """Prefix rows of -1, then a grid whose value at (y, x) is `10 * y + x` in channel 0 and `x` in channel 1."""
    y, x = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    grid = torch.stack([10.0 * y + x, x.float()], dim=-1).reshape(-1, 2)
    return torch.cat([torch.full((prefix, 2), -1.0), grid]).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_upsampling_matches_hand_computed_bilinear_values(dtype):
    resized = resize_position_grid(_ramp_table(1, 2, 2, dtype), (4, 4))
    assert resized.dtype == dtype and resized.shape == (17, 2)
    assert torch.equal(resized[0], torch.tensor([-1.0, -1.0], dtype=dtype))
    coords_y, coords_x = torch.meshgrid(UPSAMPLED_COORDS, UPSAMPLED_COORDS, indexing="ij")
    expected = torch.stack([10 * coords_y + coords_x, coords_x], dim=-1).reshape(-1, 2)
    torch.testing.assert_close(
        resized[1:].float(), expected, rtol=0, atol=0.05 if dtype != torch.float32 else 0
    )


def test_explicit_rectangular_grid_and_prefix():
    positions = _ramp_table(2, 2, 3)
    resized = resize_position_grid(positions, (2, 3), old_grid=(2, 3), prefix=2)
    assert resized is positions  # same grid: unchanged
    down = resize_position_grid(positions, (1, 3), old_grid=(2, 3), prefix=2)
    assert torch.equal(down[:2], positions[:2])
    # Halving the rows averages them: channel 0 becomes 10 * 0.5 + x, channel 1 stays x.
    torch.testing.assert_close(down[2:], torch.tensor([[5.0, 0.0], [6.0, 1.0], [7.0, 2.0]]))


@pytest.mark.parametrize(("old", "new"), [(6, 4), (4, 6), (24, 16), (3, 7)])
def test_constant_grid_stays_constant(old, new):
    positions = torch.cat([_table(1), torch.full((old * old, 12), 0.375)])
    resized = resize_position_grid(positions, (new, new))
    assert resized.shape == (1 + new * new, 12)
    assert torch.equal(resized[:1], positions[:1])
    torch.testing.assert_close(resized[1:], torch.full((new * new, 12), 0.375), rtol=0, atol=1e-7)


def test_initialization_callers_keep_cls_and_drop_distillation():
    """The callers on tiny CLIP and AST towers: CLS kept, AST's distillation position dropped, grids resized."""
    torch.manual_seed(0)
    clip = CLIPVisionModel(
        CLIPVisionConfig(
            image_size=48,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=4,
            patch_size=8,
        )
    )
    converted = convert_clip_vision_state_dict(clip, 32, prefix="")
    source = clip.embeddings.position_embedding.weight.detach()
    table = converted["embeddings.position_embedding.weight"]
    assert table.shape == (1 + 4 * 4, 32) and torch.equal(table[0], source[0])
    assert torch.equal(table, resize_position_grid(source, (4, 4), (6, 6)))

    ast = ASTModel(
        ASTConfig(
            hidden_size=24,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=37,
            patch_size=8,
            num_mel_bins=32,
            max_length=64,
            frequency_stride=4,
            time_stride=4,
        )
    )
    converted, _ = convert_ast_state_dict(ast, (2, 4), prefix="")
    positions = ast.embeddings.position_embeddings.detach()[0]
    table = converted["embeddings.position_embeddings"][0]
    assert table.shape == (1 + 2 * 4, 24) and torch.equal(table[0], positions[0])
    without_distillation = torch.cat([positions[:1], positions[2:]])
    assert torch.equal(table, resize_position_grid(without_distillation, (2, 4), ast_patch_grid(ast.config)))


def test_same_grid_is_returned_unchanged_and_wrong_grid_is_refused():
    positions = _table(17)
    assert resize_position_grid(positions, (4, 4)) is positions
    with pytest.raises(ConversionError, match="does not fit"):
        resize_position_grid(positions, (2, 2), old_grid=(3, 5))
