"""Tests of `transformers_valor.conversion.key_mapping` on tiny state dicts with the original key layout."""

import pytest
import torch

from original_checkpoints import AUDIO, IMAGE, PROJ, original_state_dict, overrides_for
from transformers_valor.conversion import (
    ConversionError,
    convert_state_dict,
    infer_config,
    key_map,
    load_original_state_dict,
)


def test_unknown_key_is_refused(tmp_path):
    state_dict = original_state_dict("valor-b")
    state_dict["video_encoder.head.weight"] = torch.zeros(3, 3)
    state_dict["some_new_module.weight"] = torch.zeros(2)
    config = infer_config(state_dict, "valor-b", image_size=IMAGE, overrides=overrides_for("valor-b"))
    with pytest.raises(ConversionError, match="cannot place") as error:
        convert_state_dict(state_dict, config, "valor-b")
    assert "video_encoder.head.weight" in str(error.value)
    assert "some_new_module.weight" in str(error.value)


def test_wrong_shape_is_refused():
    state_dict = original_state_dict("valor-l")
    state_dict["contra_head_a.linear.weight"] = torch.zeros(PROJ, AUDIO + 1)
    config = infer_config(state_dict, "valor-l", image_size=IMAGE, overrides=overrides_for("valor-l"))
    with pytest.raises(ConversionError, match="shape mismatch") as error:
        convert_state_dict(state_dict, config, "valor-l")
    assert "contra_head_a.linear.weight" in str(error.value) and f"({PROJ}, {AUDIO + 1})" in str(error.value)


def test_missing_weight_and_unshared_text_encoder_are_refused():
    state_dict = original_state_dict("valor-b")
    del state_dict["audio_fine_weight.2.bias"]
    state_dict["txt_encoder.encoder.layer.0.output.dense.bias"] += 1.0
    config = infer_config(state_dict, "valor-b", image_size=IMAGE, overrides=overrides_for("valor-b"))
    with pytest.raises(ConversionError) as error:
        convert_state_dict(state_dict, config, "valor-b")
    message = str(error.value)
    assert "valor.audio_weight_mlp.2.bias" in message and "not filled" in message
    assert "txt_encoder.encoder.layer.0.output.dense.bias" in message


@pytest.mark.parametrize("variant", ["valor-b", "valor-l"])
def test_every_key_is_mapped_or_dropped(variant):
    state_dict = original_state_dict(variant)
    config = infer_config(state_dict, variant, image_size=IMAGE, overrides=overrides_for(variant))
    converted, report = convert_state_dict(state_dict, config, variant)
    used = {source.split(" [")[0] for source in report.mapped.values()}
    assert used | set(report.dropped) == set(state_dict) and not used & set(report.dropped)
    assert set(converted) == set(report.mapped)
    rules, dropped = key_map(config, variant)
    assert ("contra_temp" in report.dropped) == (variant == "valor-l")
    assert any(rule.transform == "split3" for rule in rules) == (variant == "valor-l")
    assert all(isinstance(reason, str) and reason for _, reason in dropped)


def test_untied_decoder_is_refused():
    state_dict = original_state_dict("valor-b")
    state_dict["cls.decoder.weight"] = state_dict["cls.decoder.weight"] + 1.0
    config = infer_config(state_dict, "valor-b", image_size=IMAGE, overrides=overrides_for("valor-b"))
    with pytest.raises(ConversionError, match="not tied"):
        convert_state_dict(state_dict, config, "valor-b")


def test_load_original_state_dict_unwraps(tmp_path):
    tensors = {"a.weight": torch.ones(2), "b.bias": torch.zeros(1)}
    torch.save({"state_dict": {f"module.{k}": v for k, v in tensors.items()}}, tmp_path / "wrapped.pt")
    loaded = load_original_state_dict(tmp_path / "wrapped.pt")
    assert set(loaded) == set(tensors) and all(torch.equal(loaded[k], v) for k, v in tensors.items())
    torch.save({"model": {"a": 1}}, tmp_path / "not_tensors.pt")
    with pytest.raises(ConversionError, match="state dict of tensors"):
        load_original_state_dict(tmp_path / "not_tensors.pt")
