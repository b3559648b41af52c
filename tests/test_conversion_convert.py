"""End-to-end tests of `transformers_valor.conversion.convert` (`convert_checkpoint`, the command line) on tiny
state dicts with the ORIGINAL VALOR key layout (built in `original_checkpoints`)."""

import json
import os
import runpy
import sys

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard

from original_checkpoints import (
    CLIP_SOURCE_GRID,
    CLIP_WIDTH,
    IMAGE,
    convert_tiny,
    original_state_dict,
    overrides_for,
    write_vocab,
)
from transformers_valor import ValorForPreTraining
from transformers_valor.conversion import ConversionError, convert_checkpoint, main


@pytest.mark.parametrize("variant", ["valor-b", "valor-l"])
def test_conversion_writes_a_loadable_folder(variant, tmp_path):
    torch.manual_seed(0)
    state_dict, out, report = convert_tiny(variant, tmp_path)
    for name in ("model.safetensors", "config.json", "README.md", "tokenizer.json", "processor_config.json"):
        assert (out / name).exists(), name
    # Every original key is either mapped or dropped on purpose.
    used = {source.split(" [")[0] for source in report.mapped.values()}
    assert used | set(report.dropped) == set(state_dict)
    assert report.verification and max(report.verification.values()) < 1e-4
    assert {"caption_logits", "retrieval_scores_tva", "retrieval_logits_ta"} <= set(report.verification)

    model = ValorForPreTraining.from_pretrained(out)
    weights = model.state_dict()
    assert torch.equal(
        weights["valor.text_model.encoder.layer.1.crossattention.self.key.weight"],
        state_dict["multimodal_encoder.encoder.layer.1.cross_attn.cross.key.weight"],
    )
    assert torch.equal(weights["cls.predictions.bias"], state_dict["cls.decoder.bias"])
    assert torch.equal(weights["cls.predictions.decoder.weight"], state_dict["cls.decoder.weight"])
    assert torch.equal(
        weights["valor.audio_model.layers.1.attention.v_proj.weight"],
        state_dict["audio_encoder.layer.1.attention.linears.2.weight"],
    )
    assert torch.equal(
        weights["valor.video_adapter.projection.1.bias"], state_dict["hidden_trans_video_multimodal.1.bias"]
    )
    if variant == "valor-b":
        assert model.config.logit_scale_type == "temperature"
        # The reference's 0-d scalar becomes a 1-element parameter (FSDP2 shards no 0-d parameter).
        assert weights["valor.temperature"].shape == (1,) and weights[
            "valor.temperature"
        ].item() == pytest.approx(0.05)
        assert "video_encoder.layers.0.blocks.0.attn.relative_position_index" in report.dropped
    else:
        assert model.config.logit_scale_type == "log_scale" and model.config.use_task_prompt
        assert torch.equal(weights["valor.logit_scale"], state_dict["clip_model.logit_scale"].reshape(1))
        assert "clip_model.transformer.resblocks.0.attn.in_proj_weight" in report.dropped
        in_proj = state_dict["clip_model.visual.transformer.resblocks.1.attn.in_proj_weight"]
        for index, name in enumerate("qkv"):
            target = weights[f"valor.vision_model.encoder.layers.1.self_attn.{name}_proj.weight"]
            assert torch.equal(target, in_proj[index * CLIP_WIDTH : (index + 1) * CLIP_WIDTH])
        # 6 x 6 source grid -> 4 x 4 at 32 px, CLS position kept: compare with an independent interpolation.
        source = state_dict["clip_model.visual.positional_embedding"]
        grid = source[1:].reshape(CLIP_SOURCE_GRID, CLIP_SOURCE_GRID, -1).permute(2, 0, 1)[None]
        resized = F.interpolate(grid, size=(4, 4), mode="bilinear", align_corners=False)[0]
        expected = torch.cat([source[:1], resized.permute(1, 2, 0).reshape(16, -1)])
        torch.testing.assert_close(
            weights["valor.vision_model.embeddings.position_embedding.weight"], expected
        )
    card = ModelCard.load(out / "README.md")
    assert "valor" in card.data.tags and card.data.library_name == "transformers"
    assert "python -m transformers_valor.conversion" in card.text


def test_command_line(tmp_path):
    state_dict = original_state_dict("valor-b", seed=3)
    checkpoint = tmp_path / "ckpt.pt"
    torch.save({"model": state_dict}, checkpoint)  # a wrapped state dict is unwrapped
    out = tmp_path / "cli"
    main(
        [
            "--checkpoint",
            str(checkpoint),
            "--variant",
            "valor-b",
            "--vocab",
            write_vocab(tmp_path / "vocab.txt"),
            "--output_dir",
            str(out),
            "--image_size",
            str(IMAGE),
            "--config_overrides",
            json.dumps(overrides_for("valor-b")),
        ]
    )
    assert os.path.exists(out / "model.safetensors") and os.path.exists(out / "conversion_report.json")


def test_python_dash_m_runs_the_converter(monkeypatch, capsys):
    """`python -m transformers_valor.conversion` is the converter's command line."""
    monkeypatch.setattr(sys, "argv", ["python -m transformers_valor.conversion", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("transformers_valor.conversion", run_name="__main__")
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith("usage: python -m transformers_valor.conversion")
    for option in (
        "--checkpoint",
        "--variant",
        "--vocab",
        "--output_dir",
        "--push_to_hub",
        "--image_size",
        "--config_overrides",
        "--no_verify",
    ):
        assert option in usage


def test_refused_parity_check_leaves_no_model(tmp_path):
    state_dict = original_state_dict("valor-b", seed=3)
    state_dict["audio_encoder.layer.1.attention.linears.2.weight"][0, 0] = float("nan")
    out = tmp_path / "converted"
    with pytest.raises(ConversionError, match="Parity check failed"):
        convert_checkpoint(
            state_dict,
            "valor-b",
            out,
            vocab=write_vocab(tmp_path / "vocab.txt"),
            image_size=IMAGE,
            config_overrides=overrides_for("valor-b"),
        )
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["vocab.txt"]


def test_output_dir_with_other_files_is_refused_and_a_conversion_is_replaced(tmp_path):
    state_dict = original_state_dict("valor-b", seed=3)
    out = tmp_path / "converted"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    kwargs = dict(image_size=IMAGE, config_overrides=overrides_for("valor-b"), verify=False)
    with pytest.raises(ConversionError, match=r"converted holds files .*notes\.txt"):
        convert_checkpoint(state_dict, "valor-b", out, **kwargs)
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    convert_checkpoint(state_dict, "valor-b", out, **kwargs)
    convert_checkpoint(state_dict, "valor-b", out, **kwargs)  # a finished conversion is replaced as a whole
    assert (out / "model.safetensors").is_file() and not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("content", [b"this is a text file, not a checkpoint\n", b""])
def test_checkpoint_that_is_not_a_torch_file(tmp_path, content):
    checkpoint = tmp_path / "notes.pt"
    checkpoint.write_bytes(content)
    with pytest.raises(ConversionError, match=r"notes\.pt is not a PyTorch checkpoint"):
        main(["--checkpoint", str(checkpoint), "--variant", "valor-b", "--output_dir", str(tmp_path / "out")])
    with pytest.raises(ConversionError, match="is a folder"):
        main(["--checkpoint", str(tmp_path), "--variant", "valor-b", "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
