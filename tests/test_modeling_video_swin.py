"""Tests of the Video Swin video tower (`ValorVideoSwinModel`) on tiny configurations."""

import itertools
from math import prod

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from helpers import ValorVideoSwinModelTester
from helpers import seeded_floats as floats_tensor
from transformers_valor import ValorVideoSwinModel
from transformers_valor.modeling_video_swin import (
    REFERENCE_SHIFTED_WINDOW_MASK_VALUE,
    SHIFTED_WINDOW_MASK_VALUE,
    ValorVideoSwinBlock,
    get_window_and_shift,
    relative_position_index,
    shifted_window_mask,
)


@pytest.fixture
def tester() -> ValorVideoSwinModelTester:
    return ValorVideoSwinModelTester()


def test_output_shapes_and_pooler(tester):
    model = tester.create_model()
    with torch.no_grad():
        output = model(tester.prepare_inputs())
    grid_h, grid_w = tester.expected_grid(tester.image_size, tester.image_size)
    expected = (tester.batch_size, tester.num_frames, grid_h * grid_w, tester.hidden_size)
    assert output.last_hidden_state.shape == expected
    assert output.pooler_output.shape == (tester.batch_size, tester.num_frames, tester.hidden_size)
    torch.testing.assert_close(output.pooler_output, output.last_hidden_state.mean(dim=2))
    assert output.hidden_states is None
    assert model.config.hidden_size == tester.hidden_size


@pytest.mark.parametrize("num_frames", [1, 2, 4, 5])
def test_frames_give_as_many_temporal_slots(tester, num_frames):
    model = tester.create_model()
    with torch.no_grad():
        output = model(tester.prepare_inputs(num_frames=num_frames))
    assert output.last_hidden_state.shape[:2] == (tester.batch_size, num_frames)
    assert torch.isfinite(output.last_hidden_state).all()


def test_temporal_stride_two(tester):
    model = tester.create_model(temporal_stride=2)
    with torch.no_grad():
        output = model(tester.prepare_inputs(num_frames=4))
    # 4 frames + 1 padded frame, kernel 2, stride 2 -> 2 slots.
    assert output.last_hidden_state.shape[1] == 2


def test_odd_spatial_size_is_zero_padded(tester):
    model = tester.create_model()
    odd = tester.prepare_inputs(height=26, width=30)
    padded = F.pad(odd, (0, 2, 0, 2))  # to 28 x 32, the next multiples of the patch size
    with torch.no_grad():
        out_odd = model(odd).last_hidden_state
        out_padded = model(padded).last_hidden_state
    grid_h, grid_w = tester.expected_grid(26, 30)
    assert (grid_h, grid_w) == (4, 4)
    assert out_odd.shape == (tester.batch_size, tester.num_frames, grid_h * grid_w, tester.hidden_size)
    torch.testing.assert_close(out_odd, out_padded)


def test_eager_and_sdpa_agree(tester):
    # Two blocks per stage so that stage 0 (6 x 6 grid, window 3) has a block shifted along every axis.
    model = tester.create_model(depths=[2, 2])
    pixels = tester.prepare_inputs(num_frames=4)
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        sdpa = model(pixels, output_hidden_states=True)
    model.set_attn_implementation("eager")
    assert model.layers[1].blocks[1].attn.config._attn_implementation == "eager"
    with torch.no_grad():
        eager = model(pixels, output_hidden_states=True)
    torch.testing.assert_close(sdpa.last_hidden_state, eager.last_hidden_state, atol=1e-5, rtol=1e-5)
    for left, right in zip(sdpa.hidden_states, eager.hidden_states):
        torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_same_loss_and_grads(tester):
    model = tester.create_model().train()
    pixels = tester.prepare_inputs()

    def loss_and_grads():
        model.zero_grad()
        loss = model(pixels).last_hidden_state.pow(2).mean()
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    loss, grads = loss_and_grads()
    model.activation_checkpointing_enable()
    assert all(block.gradient_checkpointing for stage in model.layers for block in stage.blocks)
    loss_ckpt, grads_ckpt = loss_and_grads()
    torch.testing.assert_close(loss, loss_ckpt)
    assert grads.keys() == grads_ckpt.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ckpt[name], msg=name)


def test_save_and_load_round_trip(tester, tmp_path):
    model = tester.create_model()
    pixels = tester.prepare_inputs()
    model.save_pretrained(tmp_path)
    saved_keys = load_file(tmp_path / "model.safetensors").keys()
    assert not any("relative_position_index" in key for key in saved_keys)

    loaded = ValorVideoSwinModel.from_pretrained(tmp_path).eval()
    for name, module in loaded.named_modules():
        if name.endswith(".attn"):
            assert torch.equal(module.relative_position_index, relative_position_index(module.window_size)), (
                name
            )
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(pixels).last_hidden_state, model(pixels).last_hidden_state, rtol=0, atol=0
        )


def test_checkpoint_with_index_buffers_loads(tester, tmp_path):
    """Published checkpoints carry `relative_position_index`; it is ignored and rebuilt on load."""
    model = tester.create_model()
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    for name, module in model.named_modules():
        if name.endswith(".attn"):
            state[f"{name}.relative_position_index"] = torch.zeros_like(module.relative_position_index)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})

    loaded, info = ValorVideoSwinModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"]
    for name, module in loaded.named_modules():
        if name.endswith(".attn"):
            assert torch.equal(module.relative_position_index, relative_position_index(module.window_size)), (
                name
            )


def test_parameter_names_follow_the_reference_layout(tester):
    keys = set(tester.create_model().state_dict())
    expected = {
        "patch_embed.proj.weight",
        "patch_embed.norm.weight",
        "layers.0.blocks.0.norm1.weight",
        "layers.0.blocks.0.attn.qkv.weight",
        "layers.0.blocks.0.attn.qkv.bias",
        "layers.0.blocks.0.attn.proj.weight",
        "layers.0.blocks.0.attn.relative_position_bias_table",
        "layers.0.blocks.0.norm2.weight",
        "layers.0.blocks.0.mlp.fc1.weight",
        "layers.0.blocks.0.mlp.fc2.weight",
        "layers.0.downsample.reduction.weight",
        "layers.0.downsample.norm.weight",
        "layers.1.blocks.1.attn.relative_position_bias_table",
        "norm.weight",
    }
    assert expected <= keys
    assert "layers.0.downsample.reduction.bias" not in keys
    assert "layers.1.downsample.reduction.weight" not in keys
    assert not any("relative_position_index" in key for key in keys)


def test_auto_model_resolves_the_class(tester, tmp_path):
    tester.create_model().save_pretrained(tmp_path)
    assert type(AutoModel.from_pretrained(tmp_path)) is ValorVideoSwinModel
    assert type(AutoModel.from_config(tester.get_config())) is ValorVideoSwinModel


def test_hidden_states(tester):
    model = tester.create_model()
    with torch.no_grad():
        output = model(tester.prepare_inputs(), output_hidden_states=True)
    batch, frames = tester.batch_size, tester.num_frames
    grid = tester.image_size // 4
    expected = [
        (batch, frames, grid * grid, tester.embed_dim),  # patch embeddings, input of stage 0
        (batch, frames, (grid // 2) ** 2, 2 * tester.embed_dim),  # input of stage 1
        (batch, frames, (grid // 2) ** 2, 2 * tester.embed_dim),  # output of stage 1, before the final norm
    ]
    assert [tuple(h.shape) for h in output.hidden_states] == expected
    torch.testing.assert_close(model.norm(output.hidden_states[-1]), output.last_hidden_state)


def test_return_dict_false(tester):
    model = tester.create_model()
    pixels = tester.prepare_inputs()
    with torch.no_grad():
        as_tuple = model(pixels, return_dict=False)
        as_tuple_hidden = model(pixels, return_dict=False, output_hidden_states=True)
        as_dict = model(pixels)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    torch.testing.assert_close(as_tuple[0], as_dict.last_hidden_state)
    torch.testing.assert_close(as_tuple[1], as_dict.pooler_output)
    assert len(as_tuple_hidden) == 3 and len(as_tuple_hidden[2]) == len(tester.depths) + 1


def test_invalid_input_raises(tester):
    model = tester.create_model()
    with pytest.raises(ValueError, match="pixel_values_videos"):
        model(torch.zeros(2, 3, 24, 24))
    with pytest.raises(ValueError, match="channels"):
        model(torch.zeros(1, 2, 4, 24, 24))


def test_get_window_and_shift_clamps_like_the_reference():
    assert get_window_and_shift((4, 56, 56), (8, 7, 7), (4, 3, 3)) == ((4, 7, 7), (0, 3, 3))
    assert get_window_and_shift((8, 7, 7), (8, 7, 7), (4, 3, 3)) == ((8, 7, 7), (0, 0, 0))
    assert get_window_and_shift((16, 14, 5), (8, 7, 7), (4, 3, 3)) == ((8, 7, 5), (4, 3, 0))
    assert get_window_and_shift((16, 14, 14), (8, 7, 7), (0, 0, 0)) == ((8, 7, 7), (0, 0, 0))


def test_window_depth_clamped_to_short_clips(tester):
    """2 frames with window depth 8 equal window depth 2 (no temporal shift either way)."""
    large = tester.create_model(window_size=[8, 3, 3])
    small = tester.create_model(window_size=[2, 3, 3])
    state = large.state_dict()
    for key, table in state.items():
        if key.endswith("relative_position_bias_table"):
            # Keep the rows of temporal offsets -1..1 out of -7..7 (15 x 5 x 5 layout -> 3 x 5 x 5).
            state[key] = table.view(15, 5, 5, -1)[6:9].reshape(-1, table.shape[-1])
    small.load_state_dict(state)
    pixels = tester.prepare_inputs(num_frames=2)
    with torch.no_grad():
        torch.testing.assert_close(large(pixels).last_hidden_state, small(pixels).last_hidden_state)


def test_relative_position_bias_is_a_contiguous_mask(tester):
    """SDPA's memory-efficient CUDA kernel rejects masks whose last dimension is strided."""
    attn = tester.create_model().layers[0].blocks[0].attn
    for window in ((2, 3, 3), (1, 3, 2)):
        bias = attn.relative_position_bias(window)
        assert bias.shape == (attn.num_heads, prod(window), prod(window)) and bias.is_contiguous()


def test_builds_on_the_meta_device(tester):
    with torch.device("meta"):
        model = ValorVideoSwinModel(tester.get_config(drop_path_rate=0.2))
    assert model.layers[1].blocks[1].drop_path.drop_prob == pytest.approx(0.2)


def test_bfloat16_forward(tester):
    model = tester.create_model().to(torch.bfloat16)
    with torch.no_grad():
        output = model(tester.prepare_inputs())
    assert output.last_hidden_state.dtype == torch.bfloat16
    assert torch.isfinite(output.last_hidden_state.float()).all()


def naive_block_forward(block: ValorVideoSwinBlock, hidden_states: torch.Tensor) -> torch.Tensor:
    """One Video Swin block written with explicit loops over samples, windows, heads and token pairs."""
    batch, depth, height, width, dim = hidden_states.shape
    sizes = (depth, height, width)
    window, shift = [], []
    for size, win, sh in zip(sizes, block.window_size, block.shift_size):
        window.append(size if size <= win else win)
        shift.append(0 if size <= win else sh)
    padded = [-(-size // win) * win for size, win in zip(sizes, window)]
    attn = block.attn
    heads, head_dim = attn.num_heads, dim // attn.num_heads
    table = attn.relative_position_bias_table
    table_d, table_h, table_w = block.window_size

    normed = torch.zeros(batch, *padded, dim)
    normed[:, :depth, :height, :width] = block.norm1(hidden_states)
    # Cyclic shift: the token at rolled position p comes from position (p + shift) mod size.
    gather = [(torch.arange(size) + sh) % size for size, sh in zip(padded, shift)]
    rolled = normed[:, gather[0]][:, :, gather[1]][:, :, :, gather[2]]

    local = list(itertools.product(*(range(win) for win in window)))
    output = torch.zeros_like(rolled)
    for b in range(batch):
        for start in itertools.product(*(range(0, size, win) for size, win in zip(padded, window))):
            coords = [tuple(s + c for s, c in zip(start, offset)) for offset in local]
            tokens = torch.stack([rolled[b, d, h, w] for d, h, w in coords])  # (N, dim)
            qkv = F.linear(tokens, attn.qkv.weight, attn.qkv.bias).view(len(coords), 3, heads, head_dim)
            context = []
            for head in range(heads):
                q, k, v = qkv[:, 0, head], qkv[:, 1, head], qkv[:, 2, head]
                scores = (q @ k.T) * head_dim**-0.5
                for i, j in itertools.product(range(len(coords)), repeat=2):
                    dd, dh, dw = (local[i][axis] - local[j][axis] for axis in range(3))
                    row = (
                        (dd + table_d - 1) * (2 * table_h - 1) * (2 * table_w - 1)
                        + (dh + table_h - 1) * (2 * table_w - 1)
                        + (dw + table_w - 1)
                    )
                    scores[i, j] = scores[i, j] + table[row, head]
                    # Tokens that wrapped around an axis only see tokens that wrapped around it too.
                    wrapped_i = [sh > 0 and c + sh >= size for c, sh, size in zip(coords[i], shift, padded)]
                    wrapped_j = [sh > 0 and c + sh >= size for c, sh, size in zip(coords[j], shift, padded)]
                    if wrapped_i != wrapped_j:
                        scores[i, j] = scores[i, j] - 100.0  # Video Swin's mask value, not -inf
                context.append(scores.softmax(dim=-1) @ v)
            result = attn.proj(torch.cat(context, dim=-1))  # (N, dim)
            for (d, h, w), value in zip(coords, result):
                output[b, d, h, w] = value

    unrolled = torch.zeros_like(output)
    unrolled[:, gather[0]] = output
    output = unrolled.clone()
    unrolled[:, :, gather[1]] = output
    output = unrolled.clone()
    unrolled[:, :, :, gather[2]] = output
    hidden = hidden_states + unrolled[:, :depth, :height, :width]
    return hidden + block.mlp(block.norm2(hidden))


@pytest.mark.parametrize("size", [(4, 6, 6), (3, 5, 4)])
def test_window_attention_matches_naive_loop(tester, size):
    model = tester.create_model()
    block = model.layers[0].blocks[0]
    # A shifted block with the stage's window (2, 3, 3) and shift (1, 1, 1).
    shifted = ValorVideoSwinBlock(model.config, tester.embed_dim, 2, shifted=True, drop_path=0.0).eval()
    shifted.load_state_dict(block.state_dict())
    with torch.no_grad():
        shifted.attn.relative_position_bias_table.normal_(0, 1.0)  # make the bias matter
    hidden = floats_tensor((2, *size, tester.embed_dim), seed=1)
    stage = model.layers[0]
    window, shift = get_window_and_shift(size, stage.window_size, stage.shift_size)
    assert any(shift)
    padded = tuple(-(-s // w) * w for s, w in zip(size, window))
    mask = shifted_window_mask(padded, window, shift)
    with torch.no_grad():
        for module, kwargs in ((block, {}), (shifted, {"shift_mask": mask})):
            for implementation in ("eager", "sdpa"):
                model.set_attn_implementation(implementation)
                expected = naive_block_forward(module, hidden)
                torch.testing.assert_close(module(hidden, **kwargs)[0], expected, atol=1e-5, rtol=1e-5)


def shifted_block_outputs_and_grads(tester, mask_value: float, implementation: str):
    """A shifted block's output on seeded tokens and the gradients of its parameters, with the given mask value."""
    torch.manual_seed(0)
    model = tester.create_model()
    model.set_attn_implementation(implementation)
    block = ValorVideoSwinBlock(model.config, tester.embed_dim, 2, shifted=True, drop_path=0.0).eval()
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_(0, 1.0)
    size = (4, 6, 6)
    window, shift = get_window_and_shift(size, model.layers[0].window_size, model.layers[0].shift_size)
    padded = tuple(-(-s // w) * w for s, w in zip(size, window))
    mask = shifted_window_mask(padded, window, shift, mask_value=mask_value)
    output = block(floats_tensor((2, *size, tester.embed_dim), seed=1), shift_mask=mask)[0]
    output.square().sum().backward()
    return output.detach(), {name: p.grad for name, p in block.named_parameters()}


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_shifted_window_mask_value_computes_the_reference_function(tester, implementation):
    # -100 leaves denormal weights (slow on CPUs); -1e4 leaves zeros. Below float32's rounding, they are the same.
    assert SHIFTED_WINDOW_MASK_VALUE < REFERENCE_SHIFTED_WINDOW_MASK_VALUE
    ours = shifted_block_outputs_and_grads(tester, SHIFTED_WINDOW_MASK_VALUE, implementation)
    reference = shifted_block_outputs_and_grads(tester, REFERENCE_SHIFTED_WINDOW_MASK_VALUE, implementation)
    torch.testing.assert_close(ours[0], reference[0], atol=0, rtol=0)
    assert ours[1].keys() == reference[1].keys()
    for name in ours[1]:
        torch.testing.assert_close(ours[1][name], reference[1][name], atol=0, rtol=0, msg=name)


def test_shifted_window_mask_leaves_exact_zero_weights():
    probabilities = torch.softmax(torch.tensor([0.0, SHIFTED_WINDOW_MASK_VALUE]), dim=0)
    assert probabilities[1] == 0
    reference = torch.softmax(torch.tensor([0.0, REFERENCE_SHIFTED_WINDOW_MASK_VALUE]), dim=0)
    assert 0 < reference[1] < torch.finfo(torch.float32).tiny  # the denormal the reference's value leaves


@pytest.mark.parametrize("num_stages", [-1, 0, 1, 2])
def test_freeze_stages_stops_gradients_below_the_first_trainable_stage(tester, num_stages):
    model = tester.create_model().train()
    model.freeze_stages(num_stages)
    model(tester.prepare_inputs()).last_hidden_state.pow(2).mean().backward()
    frozen_roots = [] if num_stages < 0 else ["patch_embed", *(f"layers.{i}." for i in range(num_stages))]
    for name, param in model.named_parameters():
        frozen = any(name.startswith(root) for root in frozen_roots)
        assert param.requires_grad is not frozen, name
        assert (param.grad is None) is frozen, name
    assert model.training and all(module.training for module in model.modules())


def test_freeze_stages_rejects_a_stage_count_the_model_lacks(tester):
    model = tester.create_model()
    with pytest.raises(ValueError, match=f"between -1 and the number of stages \\({len(model.layers)}\\)"):
        model.freeze_stages(len(model.layers) + 1)
