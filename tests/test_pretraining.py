"""ValorForPreTraining: the combined objective, shared encoder passes, groups per batch (its distributed training
through `PretrainingObjective` is tested in tests/test_training_objectives.py)."""

import pytest
import torch

from helpers import ValorInputsTester, tiny_valor_config
from transformers_valor import ValorForPreTraining
from transformers_valor.data.masking import CaptionMaskingConfig, mask_captions


class ValorPreTrainingTester:
    """A tiny pretraining model and a seeded, masked batch."""

    def create_model(self, **overrides):
        torch.manual_seed(0)
        return ValorForPreTraining(tiny_valor_config(**overrides)).train()

    def prepare_inputs(self, model):
        inputs = ValorInputsTester().prepare_inputs()
        config = CaptionMaskingConfig.from_model_config(model.config.text_config)
        inputs["caption_input_ids"], inputs["labels"] = mask_captions(
            inputs["input_ids"], config, torch.Generator().manual_seed(0)
        )
        return inputs


def test_loss_is_weighted_sum_of_group_means():
    tester = ValorPreTrainingTester()
    model = tester.create_model()
    out = model(**tester.prepare_inputs(model))
    assert set(out.group_losses) == {"mga_tva", "mga_tv", "mga_ta", "mgc_tva", "mgc_tv", "mgc_ta"}
    mga = torch.stack([out.group_losses[f"mga_{g}"] for g in ("tva", "tv", "ta")]).mean()
    mgc = torch.stack([out.group_losses[f"mgc_{g}"] for g in ("tva", "tv", "ta")]).mean()
    torch.testing.assert_close(out.contrastive_loss, mga)
    torch.testing.assert_close(out.caption_loss, mgc)
    torch.testing.assert_close(out.loss, 1.5 * mga + mgc)


def test_pretraining_lowers_every_component():
    tester = ValorPreTrainingTester()
    model = tester.create_model()
    inputs = tester.prepare_inputs(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = last = None
    for _ in range(10):
        out = model(**inputs)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        values = {k: v.item() for k, v in out.group_losses.items()}
        first = first or values
        last = values
    assert all(last[k] < first[k] for k in first), (first, last)


def test_encoders_run_once_per_batch():
    tester = ValorPreTrainingTester()
    model = tester.create_model()
    calls = {"video": 0, "audio": 0}
    model.valor.vision_model.register_forward_hook(lambda *a: calls.__setitem__("video", calls["video"] + 1))
    model.valor.audio_model.register_forward_hook(lambda *a: calls.__setitem__("audio", calls["audio"] + 1))
    model(**tester.prepare_inputs(model))
    assert calls == {"video": 1, "audio": 1}


def test_batches_without_audio_train_text_video_only():
    tester = ValorPreTrainingTester()
    model = tester.create_model()
    inputs = tester.prepare_inputs(model)
    inputs.pop("input_features")
    inputs.pop("input_features_mask")
    out = model(**inputs)
    assert set(out.group_losses) == {"mga_tv", "mgc_tv"}
    with pytest.raises(ValueError, match="needs audio"):
        model(**inputs, contrastive_groups=["ta"])
    with pytest.raises(ValueError, match="Unknown caption group"):
        model(**inputs, caption_groups=["va"])


def test_images_as_one_frame_videos_and_explicit_groups():
    tester = ValorPreTrainingTester()
    model = tester.create_model()
    inputs = tester.prepare_inputs(model)
    inputs["pixel_values_videos"] = inputs["pixel_values_videos"][:, :1]
    out = model(**inputs, contrastive_groups=["tv", "va"], caption_groups=["ta"])
    assert set(out.group_losses) == {"mga_tv", "mga_va", "mgc_ta"}


def test_contrastive_only_and_errors():
    tester = ValorPreTrainingTester()
    model = tester.create_model()
    inputs = tester.prepare_inputs(model)
    inputs.pop("labels")
    out = model(**inputs)
    assert out.caption_loss is None and out.loss is not None
    with pytest.raises(ValueError, match="besides the text"):
        model(inputs["input_ids"])
    with pytest.raises(ValueError, match="No objective"):
        model(**inputs, contrastive_groups=[])
