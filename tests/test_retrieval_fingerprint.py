"""Tests of `retrieval.fingerprint`: what identifies a model and a processor for a gallery."""

import torch

from helpers import GalleryTester, tiny_processor
from transformers_valor import ValorModel
from transformers_valor.retrieval import model_fingerprint, processor_description
from transformers_valor.retrieval.fingerprint import settings_differences

TESTER = GalleryTester()


def test_the_same_weights_give_the_same_fingerprint_wherever_loaded_from(tmp_path):
    model = TESTER.create_model()
    model.save_pretrained(tmp_path / "m")
    reloaded = ValorModel.from_pretrained(tmp_path / "m", attn_implementation="eager")
    assert model_fingerprint(reloaded) == model_fingerprint(model) == model_fingerprint(TESTER.create_model())
    assert len(model_fingerprint(model)) == 64


def test_weights_and_config_changes_are_seen():
    reference = model_fingerprint(TESTER.create_model())
    assert model_fingerprint(TESTER.create_model(seed=1)) != reference
    head = TESTER.create_model()
    with torch.no_grad():
        head.audio_projection.weight[3, 5] += 1e-4  # any value of an MGA head
    assert model_fingerprint(head) != reference
    tower = TESTER.create_model()
    with torch.no_grad():
        for parameter in tower.vision_model.parameters():
            parameter.mul_(1.01)  # a fine-tuned tower changes (nearly) every value, sampled ones included
    assert model_fingerprint(tower) != reference
    assert model_fingerprint(TESTER.create_model(max_audio_clips=3)) != reference
    eps = TESTER.create_model()
    eps.config.vision_config.layer_norm_eps = 1e-3  # computes differently, no weight shows it
    assert model_fingerprint(eps) != reference


def test_config_fields_a_later_version_adds_do_not_change_it():
    model = TESTER.create_model()
    reference = model_fingerprint(model)
    model.config.some_new_option = "default"
    model.config.audio_config.another_option = 3
    model.config.use_task_prompt = not model.config.use_task_prompt  # query side only
    assert model_fingerprint(model) == reference


def test_processor_description_covers_the_decoding_settings():
    processor = tiny_processor()
    base = processor_description(processor)
    assert base == processor_description(tiny_processor())
    assert processor_description(processor, num_frames=2)["fingerprint"] != base["fingerprint"]
    assert processor_description(processor, processor_kwargs={"video_backend": "pyav"}) != base
    assert base["settings"]["feature_extractor"]["num_clips"] == 2
    assert settings_differences(base["settings"], base["settings"]) == []
    other = processor_description(processor, num_frames=2, processor_kwargs={"size": 16})["settings"]
    assert settings_differences(base["settings"], other) == ["num_frames", "processor_kwargs"]
    resized = {
        **base["settings"],
        "video_processor": {**base["settings"]["video_processor"], "size": {"height": 8}},
    }
    assert settings_differences(base["settings"], resized) == ["video_processor.size"]
    newer = {**base["settings"], "video_processor": {**base["settings"]["video_processor"], "new_option": 1}}
    assert settings_differences(base["settings"], newer) == []
