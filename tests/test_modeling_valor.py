"""ValorConfig, ValorModel and ValorForRetrieval: config tree, features, MGA, save/load, Auto classes, errors."""

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForMultimodalLM,
    AutoModelForPreTraining,
    CLIPVisionModel,
)

from helpers import (
    TINY_TASK_PROMPT_IDS,
    ValorModelTester,
    raw_retrieval_scores,
    tiny_clip_vision_config,
    tiny_text_config,
    tiny_valor_l_config,
)
from transformers_valor import (
    ValorForConditionalGeneration,
    ValorForPreTraining,
    ValorForRetrieval,
    ValorModel,
)
from transformers_valor.configuration_valor import MODALITY_GROUPS
from transformers_valor.modeling_valor import all_finite

GROUPS = ["tv", "ta", "tva", "va", "vta", "atv"]


# -------------------------------------------------------------------------------------------------- features
def test_feature_shapes_and_normalisation():
    tester = ValorModelTester()
    model = tester.create_model(ValorModel)
    inputs = tester.prepare_inputs()
    text = model.get_text_features(inputs["input_ids"], inputs["attention_mask"])
    video = model.get_video_features(inputs["pixel_values_videos"])
    audio = model.get_audio_features(inputs["input_features"], inputs["input_features_mask"])
    assert text.embeds.shape == (3, 7, 16) and torch.equal(text.mask, inputs["attention_mask"])
    assert video.embeds.shape == (3, 4, 16) and video.mask.shape == (3, 4)
    assert audio.embeds.shape == (3, 2, 16) and audio.mask.shape == (3, 2)
    assert video.last_hidden_state.shape == (3, 4, 16, 32)  # 4 temporal slots of 4 x 4 tokens, width 32
    assert audio.last_hidden_state.shape == (3, 2, 1 + 8, 32)  # CLS + (16/8) x (32/8) patches
    for features in (text, video, audio):
        torch.testing.assert_close(features.embeds.norm(dim=-1), torch.ones(features.embeds.shape[:2]))
        assert features.weight_logits.shape == features.mask.shape


def test_forward_returns_features_and_tuple():
    tester = ValorModelTester()
    model = tester.create_model(ValorModel)
    inputs = tester.prepare_inputs()
    out = model(**inputs)
    assert out.text_model_output.embeds.shape == (3, 7, 16)
    assert torch.equal(out.text_embeds, out.text_model_output.pooler_output)
    torch.testing.assert_close(out.logit_scale, torch.tensor(1 / 0.07))
    assert isinstance(model(**inputs, return_dict=False), tuple)
    with pytest.raises(ValueError, match="at least one"):
        model()


def test_clip_video_encoder_applies_post_layernorm_to_every_token():
    tester = ValorModelTester(vision_config=tiny_clip_vision_config())
    model = tester.create_model(ValorModel)
    assert isinstance(model.vision_model, CLIPVisionModel) and model.config.logit_scale_type == "log_scale"
    videos = tester.prepare_inputs()["pixel_values_videos"]
    tokens, frame_feats = model.encode_video(videos)
    assert tokens.shape == (3, 4, 1 + 16, 24)
    raw = model.vision_model(pixel_values=videos.flatten(0, 1)).last_hidden_state
    expected = model.vision_model.post_layernorm(raw).view(3, 4, 17, 24)
    torch.testing.assert_close(tokens, expected)
    torch.testing.assert_close(frame_feats, expected[:, :, 0])
    # The decoder adapter projects the 24-wide CLIP tokens to the 32-wide text space.
    video_states, _ = model.decoder_inputs(tokens, None)
    assert video_states.shape == (3, 4 * 17, 32)


# ----------------------------------------------------------------------------------------------------- MGA
@pytest.mark.parametrize("group", GROUPS)
def test_retrieval_scores_every_group(group):
    tester = ValorModelTester()
    model = tester.create_model()
    out = model(**tester.prepare_inputs(), group=group, return_loss=True)
    rows_name, columns_name = MODALITY_GROUPS[group].logits_names
    assert getattr(out, rows_name).shape == (3, 3)
    torch.testing.assert_close(getattr(out, columns_name), getattr(out, rows_name).t())
    unnamed = {"text", "video", "audio"} - {
        rows_name[len("logits_per_") :],
        columns_name[len("logits_per_") :],
    }
    assert all(getattr(out, f"logits_per_{name}") is None for name in unnamed)
    assert torch.isfinite(out.loss)


def test_retrieval_scores_equal_precomputed_features():
    tester = ValorModelTester()
    model = tester.create_model()
    inputs = tester.prepare_inputs()
    valor = model.valor
    text = valor.get_text_features(inputs["input_ids"], inputs["attention_mask"])
    video = valor.get_video_features(inputs["pixel_values_videos"])
    audio = valor.get_audio_features(inputs["input_features"])
    scores = valor.similarity(*valor.group_features("tva", text=text, video=video, audio=audio))
    torch.testing.assert_close(raw_retrieval_scores(model(**inputs, group="tva"), "tva"), scores)


def test_coarse_variant():
    tester = ValorModelTester(contrastive_type="coarse")
    model = tester.create_model()
    inputs = tester.prepare_inputs()
    for group in ("tv", "ta", "tva", "va"):
        out = model(**inputs, group=group, return_loss=True)
        assert raw_retrieval_scores(out, group).shape == (3, 3) and torch.isfinite(out.loss)
    with pytest.raises(NotImplementedError, match="coarse"):
        model(**inputs, group="vta")
    text = model.valor.get_text_features(inputs["input_ids"], inputs["attention_mask"])
    video = model.valor.get_video_features(inputs["pixel_values_videos"])
    torch.testing.assert_close(
        raw_retrieval_scores(model(**inputs, group="tv"), "tv"), text.pooler_output @ video.pooler_output.t()
    )


def test_missing_audio_sample_is_masked_out():
    tester = ValorModelTester()
    model = tester.create_model()
    inputs = tester.prepare_inputs()
    inputs["input_features_mask"][1] = 0
    scores = raw_retrieval_scores(model(**inputs, group="ta"), "ta")
    torch.testing.assert_close(scores[:, 1], torch.zeros(3))
    assert torch.isfinite(model(**inputs, group="tva", return_loss=True).loss)


def test_mga_training_lowers_loss():
    tester = ValorModelTester()
    model = tester.create_model().train()
    inputs = tester.prepare_inputs()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = model(**inputs, group="tva", return_loss=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"group": "tv", "pixel_values_videos": None}, "pixel_values_videos"),
        ({"group": "ta", "input_features": None}, "input_features"),
        ({"group": "tx"}, "Unknown contrastive group"),
    ],
)
def test_retrieval_input_errors(kwargs, match):
    tester = ValorModelTester()
    model = tester.create_model()
    inputs = {**tester.prepare_inputs(), **kwargs}
    with pytest.raises(ValueError, match=match):
        model(**inputs)


def test_batch_size_and_slot_errors():
    tester = ValorModelTester()
    model = tester.create_model()
    inputs = tester.prepare_inputs()
    with pytest.raises(ValueError, match="Batch sizes"):
        model(**{**inputs, "pixel_values_videos": inputs["pixel_values_videos"][:2]}, group="tv")
    with pytest.raises(ValueError, match="frame embedding slots"):
        model(**{**inputs, "pixel_values_videos": torch.randn(3, 9, 3, 32, 32)}, group="tv")
    with pytest.raises(ValueError, match="clip embedding slots"):
        model(**{**inputs, "input_features": torch.randn(3, 5, 16, 32)}, group="ta")
    with pytest.raises(ValueError, match="input_features_mask"):
        model(**{**inputs, "input_features_mask": torch.ones(3, 3)}, group="ta")
    with pytest.raises(ValueError, match="channels, height, width"):
        model(**{**inputs, "pixel_values_videos": torch.randn(3, 3, 32, 32)}, group="tv")


def test_empty_batch_is_an_error():
    tester = ValorModelTester()
    model = tester.create_model()
    inputs = tester.prepare_inputs()
    with pytest.raises(ValueError, match="empty batch"):
        model(**{k: v[:0] for k, v in inputs.items()}, group="tva")


def test_non_finite_inputs_warn():
    tester = ValorModelTester()
    model = tester.create_model(ValorModel)
    inputs = tester.prepare_inputs()
    pixels = inputs["pixel_values_videos"].clone()
    pixels[1, 0, 0, 0, 0] = float("nan")
    with pytest.warns(UserWarning, match="`pixel_values_videos` holds NaN or infinite values"):
        model.get_video_features(pixels)
    features = inputs["input_features"].clone()
    features[0, 0, 0, 0] = float("inf")
    with pytest.warns(UserWarning, match="`input_features` holds NaN or infinite values"):
        model.get_audio_features(features)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_all_finite_finds_every_kind_of_non_finite_value(dtype):
    values = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert all_finite(values) and all_finite(values[:0])
    for bad in (float("nan"), float("inf"), -float("inf")):
        for index in ((0, 0, 0), (1, 2, 4)):
            spoiled = values.clone()
            spoiled[index] = bad
            assert not all_finite(spoiled), (bad, index)
    assert all_finite(torch.full((4,), torch.finfo(dtype).max, dtype=dtype))


# ------------------------------------------------------------------------------------------ task prompts
def _valor_l_retrieval(attn="eager"):
    torch.manual_seed(0)
    return ValorForRetrieval._from_config(tiny_valor_l_config(), attn_implementation=attn).eval()


@torch.no_grad()
def test_valor_l_text_encoder_runs_with_the_retrieval_prompt():
    """`ValorForRetrieval(**inputs)` on a VALOR-L config scores the text encoded with "project language in common
    space" appended, as the reference does, without the caller passing a prompt."""
    model = _valor_l_retrieval()
    inputs = ValorModelTester().prepare_inputs()
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    prompt = torch.tensor([TINY_TASK_PROMPT_IDS["retrieval"]]).repeat(3, 1)
    text = model.valor.get_text_features(ids, mask)
    hidden = model.valor.text_model(ids, mask, prompt_ids=prompt).last_hidden_state
    torch.testing.assert_close(text.last_hidden_state, hidden)
    video = model.valor.get_video_features(inputs["pixel_values_videos"])
    expected = model.valor.similarity(*model.valor.group_features("tv", text=text, video=video))
    scores = raw_retrieval_scores(model(**inputs, group="tv"), "tv")
    torch.testing.assert_close(scores, expected)
    without = raw_retrieval_scores(model(**inputs, group="tv", use_task_prompt=False), "tv")
    assert (scores - without).abs().max() > 1e-3  # the prompt changes the scores
    assert torch.equal(model.valor(**inputs).text_model_output.embeds, text.embeds)


@torch.no_grad()
def test_valor_b_text_encoder_has_no_prompt():
    tester = ValorModelTester()
    model = tester.create_model()
    inputs = tester.prepare_inputs()
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    hidden = model.valor.text_model(ids, mask).last_hidden_state
    torch.testing.assert_close(model.valor.get_text_features(ids, mask).last_hidden_state, hidden)


@torch.no_grad()
def test_valor_l_retrieval_eager_and_sdpa_agree():
    inputs = ValorModelTester().prepare_inputs()
    eager = raw_retrieval_scores(_valor_l_retrieval("eager")(**inputs, group="tva"), "tva")
    sdpa = raw_retrieval_scores(_valor_l_retrieval("sdpa")(**inputs, group="tva"), "tva")
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=1e-5)


def test_missing_task_prompt_ids_are_named():
    torch.manual_seed(0)
    model = ValorForRetrieval(tiny_valor_l_config(task_prompt_ids=None)).eval()
    inputs = ValorModelTester().prepare_inputs()
    with pytest.raises(ValueError, match=r"task prompt 'retrieval' .*set_task_prompt_ids"):
        model(**inputs, group="tv")
    assert raw_retrieval_scores(model(**inputs, group="tv", use_task_prompt=False), "tv").shape == (3, 3)


# ------------------------------------------------------------------------------------------ PreTrainedModel API
def test_save_load_round_trip_and_auto_classes(tmp_path):
    tester = ValorModelTester()
    model = tester.create_model(ValorForPreTraining)
    inputs = tester.prepare_inputs()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert isinstance(AutoModel.from_pretrained(tmp_path), ValorModel)
    assert isinstance(AutoModelForPreTraining.from_pretrained(tmp_path), ValorForPreTraining)
    assert isinstance(AutoModelForMultimodalLM.from_pretrained(tmp_path), ValorForConditionalGeneration)
    for cls in (ValorModel, ValorForRetrieval, ValorForConditionalGeneration, ValorForPreTraining):
        loaded, info = cls.from_pretrained(tmp_path, output_loading_info=True)
        assert not info["missing_keys"] and not info["mismatched_keys"], (cls.__name__, info)
    retrieval = ValorForRetrieval.from_pretrained(tmp_path).eval()
    base = model.valor
    expected = base.similarity(
        *base.group_features(
            "tva",
            text=base.get_text_features(inputs["input_ids"], inputs["attention_mask"]),
            video=base.get_video_features(inputs["pixel_values_videos"]),
            audio=base.get_audio_features(inputs["input_features"]),
        )
    )
    torch.testing.assert_close(raw_retrieval_scores(retrieval(**inputs, group="tva"), "tva"), expected)
    reloaded = ValorForPreTraining.from_pretrained(tmp_path)
    assert (
        reloaded.cls.predictions.decoder.weight is reloaded.valor.text_model.embeddings.word_embeddings.weight
    )


def test_eager_and_sdpa_give_the_same_scores_and_logits():
    tester = ValorModelTester()
    inputs = tester.prepare_inputs()
    outputs = {}
    for attn in ("eager", "sdpa"):
        torch.manual_seed(0)
        model = ValorForConditionalGeneration._from_config(
            tester.get_config(), attn_implementation=attn
        ).eval()
        retrieval = ValorForRetrieval._from_config(tester.get_config(), attn_implementation=attn).eval()
        retrieval.valor.load_state_dict(model.valor.state_dict())
        logits = model(
            inputs["input_ids"],
            inputs["attention_mask"],
            inputs["pixel_values_videos"],
            inputs["input_features"],
        ).logits
        outputs[attn] = (raw_retrieval_scores(retrieval(**inputs, group="tva"), "tva"), logits)
    torch.testing.assert_close(outputs["eager"][0], outputs["sdpa"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outputs["eager"][1], outputs["sdpa"][1], atol=1e-4, rtol=1e-4)


def test_gradient_checkpointing_gives_same_loss_and_grads():
    tester = ValorModelTester()
    inputs = tester.prepare_inputs()
    results = []
    for checkpointing in (False, True):
        model = tester.create_model(ValorForRetrieval).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        loss = model(**inputs, group="tva", return_loss=True).loss
        loss.backward()
        grad = model.valor.text_model.encoder.layer[0].attention.self.query.weight.grad.clone()
        results.append((loss.detach(), grad))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_bfloat16_forward():
    tester = ValorModelTester()
    model = tester.create_model().to(torch.bfloat16)
    inputs = tester.prepare_inputs()
    logits = model(**inputs, group="tv").logits_per_text
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def test_text_tower_hidden_states():
    tester = ValorModelTester()
    model = tester.create_model(ValorModel)
    inputs = tester.prepare_inputs()
    out = model.text_model(inputs["input_ids"], inputs["attention_mask"], output_hidden_states=True)
    assert len(out.hidden_states) == tiny_text_config()["num_hidden_layers"] + 1


# ------------------------------------------------------------------------------- attentions, hidden states, tuples
def _eager(model):
    model.set_attn_implementation("eager")
    return model


def test_model_and_retrieval_return_every_towers_attentions_and_hidden_states():
    tester = ValorModelTester()
    inputs = tester.prepare_inputs()
    flags = {"output_attentions": True, "output_hidden_states": True}
    out = _eager(tester.create_model(ValorModel))(**inputs, **flags)
    retrieval = _eager(tester.create_model(ValorForRetrieval))(**inputs, group="tva", **flags)
    layers = tiny_text_config()["num_hidden_layers"]
    for output in (out, retrieval):
        text, video, audio = output.text_model_output, output.video_model_output, output.audio_model_output
        assert len(text.attentions) == layers and text.attentions[0].shape == (3, 4, 7, 7)
        assert len(text.hidden_states) == layers + 1
        assert video.attentions and video.attentions[0].dim() == 5  # (batch, windows, heads, tokens, tokens)
        assert audio.attentions[0].shape[:2] == (3, 2) and audio.hidden_states[0].shape[:2] == (3, 2)
    torch.testing.assert_close(retrieval.text_embeds, out.text_embeds)
    plain = tester.create_model(ValorModel)(**inputs)
    assert plain.text_model_output.attentions is None and plain.video_model_output.hidden_states is None


def test_return_dict_false_gives_nested_tuples_everywhere():
    tester = ValorModelTester()
    model = tester.create_model(ValorModel)
    inputs = tester.prepare_inputs()
    text = model.get_text_features(inputs["input_ids"], inputs["attention_mask"])
    as_tuple = model.get_text_features(inputs["input_ids"], inputs["attention_mask"], return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], text.last_hidden_state)
    assert torch.equal(as_tuple[1], text.pooler_output)
    assert isinstance(model.get_video_features(inputs["pixel_values_videos"], return_dict=False), tuple)
    assert isinstance(model.get_audio_features(inputs["input_features"], return_dict=False), tuple)
    retrieval = tester.create_model(ValorForRetrieval)(**inputs, group="tv", return_dict=False)
    assert isinstance(retrieval, tuple) and all(not hasattr(item, "keys") for item in retrieval)


def test_attention_weights_under_sdpa_are_refused_by_name():
    tester = ValorModelTester()
    model = tester.create_model(ValorModel)
    model.set_attn_implementation("sdpa")
    with pytest.raises(ValueError, match="eager"):
        model(**tester.prepare_inputs(), output_attentions=True)
