"""The AST-style audio tower (`ValorAudioModel`): a ViT run on every clip, ViT's weights and maths."""

import pytest
import torch
from transformers import AutoModel, ViTModel

from helpers import ValorAudioModelTester, tiny_audio_config, tiny_valor_config
from transformers_valor import ValorAudioConfig, ValorAudioModel, ValorModel


@pytest.fixture
def tester() -> ValorAudioModelTester:
    return ValorAudioModelTester()


def _model(tester, seed=0, **overrides) -> ValorAudioModel:
    torch.manual_seed(seed)
    return ValorAudioModel(tester.get_config(**overrides)).eval()


def test_shapes_and_per_clip_cls(tester):
    model = _model(tester)
    features = tester.prepare_inputs()
    with torch.no_grad():
        out = model(features)
    patches = (16 // 8) * (32 // 8)
    assert out.last_hidden_state.shape == (tester.batch_size, tester.num_clips, 1 + patches, 32)
    assert torch.equal(out.pooler_output, out.last_hidden_state[:, :, 0])


def test_equals_vit_on_each_clip(tester):
    model = _model(tester)
    vit = ViTModel(model.config, add_pooling_layer=False).eval()
    vit.load_state_dict(model.state_dict())
    features = tester.prepare_inputs(seed=1)
    with torch.no_grad():
        tokens = model(features).last_hidden_state
        for clip in range(tester.num_clips):
            expected = vit(pixel_values=features[:, clip, None]).last_hidden_state
            torch.testing.assert_close(tokens[:, clip], expected, rtol=0, atol=1e-6)


def test_hidden_states_attentions_and_tuple(tester):
    model = _model(tester, attn_implementation="eager")
    with torch.no_grad():
        out = model(tester.prepare_inputs(), output_hidden_states=True, output_attentions=True)
        as_tuple = model(tester.prepare_inputs(), return_dict=False)
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == out.last_hidden_state.shape
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 2, 4, 9, 9)
    torch.testing.assert_close(as_tuple[0], out.last_hidden_state)


def test_save_load_and_auto_model(tester, tmp_path):
    model = _model(tester)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, ValorAudioModel) and isinstance(loaded.config, ValorAudioConfig)
    features = tester.prepare_inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(features).last_hidden_state, model(features).last_hidden_state)


def test_bad_shape_names_the_input(tester):
    with pytest.raises(ValueError, match=r"input_features.*\(batch, audio_clips, mel_bins, time_frames\)"):
        _model(tester)(torch.zeros(2, 16, 32))


def test_valor_builds_it_through_the_auto_classes():
    config = tiny_valor_config(audio_config=tiny_audio_config(image_size=[16, 64]))
    model = ValorModel(config)
    assert isinstance(model.audio_model, ValorAudioModel) and isinstance(model.audio_model, ViTModel)
    assert model.audio_model.pooler is None and model.audio_model.main_input_name == "input_features"
    assert model.audio_model.embeddings.position_embeddings.shape == (1, 1 + 2 * 8, 32)
