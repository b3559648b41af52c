"""ValorForPreTraining: the combined objective, shared encoder passes, groups per batch (its distributed training
through `PretrainingObjective` is tested in tests/test_training_objectives.py)."""

import pytest
import torch
import torch.nn.functional as F

from helpers import TINY_TASK_PROMPT_IDS, ValorInputsTester, tiny_valor_config, tiny_valor_l_config
from transformers_valor import ValorForPreTraining
from transformers_valor.data.masking import MLM_MASK_PROBABILITY, CaptionMaskingConfig, mask_captions
from transformers_valor.losses import CaptionLoss, contrastive_loss


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


def test_labels_equal_to_the_caption_are_refused():
    tester = ValorPreTrainingTester()
    model = tester.create_model()
    inputs = tester.prepare_inputs(model)
    inputs["labels"] = inputs["input_ids"]
    with pytest.raises(ValueError, match="mask_captions"):
        model(**inputs)


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


# ------------------------------------------------------------------------------------------ conditioned MLM
def _mlm_batch(model, seed=0):
    """A video-only batch (VALOR-L's WebVid / CC3M recipe) with its MGC and its 15 % MLM masking."""
    inputs = ValorPreTrainingTester().prepare_inputs(model)
    inputs.pop("input_features")
    inputs.pop("input_features_mask")
    config = CaptionMaskingConfig.from_model_config(
        model.config.text_config, mask_probability=MLM_MASK_PROBABILITY
    )
    inputs["mlm_input_ids"], inputs["mlm_labels"] = mask_captions(
        inputs["input_ids"], config, torch.Generator().manual_seed(seed)
    )
    return inputs


def _straightforward_mlm_loss(model, inputs, group="tv", prompt_name=None):
    """Bidirectional BERT over the masked caption with the group's MLM prompt and cross-attention to its video
    tokens, MLM head, cross-entropy on the masked positions."""
    ids = inputs["mlm_input_ids"]
    prompt = torch.tensor([TINY_TASK_PROMPT_IDS[prompt_name or f"mlm_{group}"]]).repeat(len(ids), 1)
    video_tokens, _ = model.valor.encode_video(inputs["pixel_values_videos"])
    video_states, _ = model.valor.decoder_inputs(video_tokens, None)
    hidden = model.valor.text_model(
        ids, inputs["attention_mask"], prompt_ids=prompt, video_states=video_states, is_decoder=False
    ).last_hidden_state
    logits = model.cls(hidden)
    labels = inputs["mlm_labels"]
    return F.cross_entropy(logits[labels != -100], labels[labels != -100])


def test_conditioned_mlm_is_a_third_objective():
    model = ValorPreTrainingTester().create_model(task_prompt_ids=TINY_TASK_PROMPT_IDS).eval()
    inputs = _mlm_batch(model)
    out = model(**inputs, mlm_groups=["tv"])
    assert set(out.group_losses) == {"mga_tv", "mgc_tv", "mlm_tv"}
    torch.testing.assert_close(out.group_losses["mlm_tv"], _straightforward_mlm_loss(model, inputs))
    torch.testing.assert_close(out.mlm_loss, out.group_losses["mlm_tv"])
    torch.testing.assert_close(out.loss, 1.5 * out.contrastive_loss + out.caption_loss + out.mlm_loss)
    # Its prompt is the group's, always (VALOR-B has `use_task_prompt` off): another prompt gives another loss.
    assert not torch.isclose(out.mlm_loss, _straightforward_mlm_loss(model, inputs, prompt_name="mlm_ta"))
    default_groups = model(**inputs)  # the config's MLM groups the batch's modalities allow
    assert set(default_groups.group_losses) == {"mga_tv", "mgc_tv", "mlm_tv"}
    without = {k: v for k, v in inputs.items() if not k.startswith("mlm_")}
    assert "mlm_tv" not in model(**without).group_losses
    with pytest.raises(ValueError, match="both `mlm_input_ids` and `mlm_labels`"):
        model(**{**without, "mlm_labels": inputs["mlm_labels"]})


@torch.no_grad()
def test_mlm_is_bidirectional_and_conditioned_on_the_video():
    model = ValorPreTrainingTester().create_model(task_prompt_ids=TINY_TASK_PROMPT_IDS).eval()
    inputs = _mlm_batch(model)
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, 1] = inputs["input_ids"][:, 1]  # predict the first word only
    ids = inputs["input_ids"].masked_fill(labels != -100, 3)
    base = {**inputs, "mlm_input_ids": ids, "mlm_labels": labels}
    loss = model(**base, mlm_groups=["tv"]).mlm_loss
    later = ids.clone()
    later[:, 3] = (later[:, 3] + 7) % 90 + 5  # a token AFTER the predicted one
    assert not torch.isclose(loss, model(**{**base, "mlm_input_ids": later}, mlm_groups=["tv"]).mlm_loss)
    other_video = {**base, "pixel_values_videos": base["pixel_values_videos"].flip(0)}
    assert not torch.isclose(loss, model(**other_video, mlm_groups=["tv"]).mlm_loss)


@torch.no_grad()
def test_mlm_eager_and_sdpa_agree():
    losses = []
    for attn in ("eager", "sdpa"):
        torch.manual_seed(0)
        model = ValorForPreTraining._from_config(
            tiny_valor_config(task_prompt_ids=TINY_TASK_PROMPT_IDS), attn_implementation=attn
        ).eval()
        out = model(**_mlm_batch(model), mlm_groups=["tv"])
        losses.append(torch.stack([out.loss, out.mlm_loss]))
    torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_valor_l_pretraining_uses_the_retrieval_and_captioning_prompts():
    torch.manual_seed(0)
    model = ValorForPreTraining(tiny_valor_l_config()).eval()
    inputs = ValorPreTrainingTester().prepare_inputs(model)
    out = model(**inputs, contrastive_groups=["tv"], caption_groups=["tv"])
    valor = model.valor
    retrieval = torch.tensor([TINY_TASK_PROMPT_IDS["retrieval"]]).repeat(3, 1)
    text = valor.get_text_features(inputs["input_ids"], inputs["attention_mask"], prompt_ids=retrieval)
    video = valor.get_video_features(inputs["pixel_values_videos"])
    scores = valor.similarity(*valor.group_features("tv", text=text, video=video))
    torch.testing.assert_close(out.group_losses["mga_tv"], contrastive_loss(scores * valor.get_logit_scale()))
    captioning = torch.tensor([TINY_TASK_PROMPT_IDS["captioning"]]).repeat(3, 1)
    video_states, _ = valor.decoder_inputs(video.last_hidden_state, None)
    hidden = valor.text_model(
        inputs["caption_input_ids"],
        inputs["attention_mask"],
        prompt_ids=captioning,
        video_states=video_states,
        is_decoder=True,
    ).last_hidden_state
    expected = CaptionLoss("unimlm")(model.cls(hidden), inputs["labels"])
    torch.testing.assert_close(out.group_losses["mgc_tv"], expected)


def test_attentions_and_hidden_states_of_every_pass():
    tester = ValorPreTrainingTester()
    model = tester.create_model()
    model.set_attn_implementation("eager")
    inputs = tester.prepare_inputs(model)
    out = model(**inputs, output_attentions=True, output_hidden_states=True)
    assert set(out.decoder_outputs) == {"mgc_tva", "mgc_tv", "mgc_ta"}
    assert out.decoder_outputs["mgc_tv"].cross_attentions[0].shape == (3, 4, 7, 4 * 16)
    assert out.decoder_outputs["mgc_tva"].cross_attentions[0].shape == (3, 4, 7, 4 * 16 + 2 * 9)
    assert out.text_model_output.attentions[0].shape == (3, 4, 7, 7)
    assert out.video_model_output.hidden_states and out.audio_model_output.attentions
    plain = model(**inputs)
    torch.testing.assert_close(plain.loss, out.loss)
    assert plain.decoder_outputs is None and plain.video_model_output.attentions is None
    assert isinstance(model(**inputs, return_dict=False), tuple)
