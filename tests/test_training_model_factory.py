"""The model a run trains (`transformers_valor.training.model_factory`): from scratch and from encoders."""

import pytest
import torch

from training_helpers import tiny_model_config
from transformers_valor import ValorConfig, ValorProcessor
from transformers_valor.training import ModelArguments, build_model, check_processor_matches_model


def test_from_scratch_vocabulary_follows_the_tokenizer(tiny_processor_dir):
    processor = ValorProcessor.from_pretrained(tiny_processor_dir)
    model = build_model(
        ModelArguments(processor=str(tiny_processor_dir), config=tiny_model_config()), processor
    )
    text = model.config.text_config
    assert text.vocab_size == len(processor.tokenizer)
    assert (text.pad_token_id, text.mask_token_id) == (
        processor.tokenizer.pad_token_id,
        processor.tokenizer.mask_token_id,
    )


def test_task_prompt_ids_come_from_the_tokenizer(tiny_processor_dir):
    processor = ValorProcessor.from_pretrained(tiny_processor_dir)
    model = build_model(
        ModelArguments(processor=str(tiny_processor_dir), config=tiny_model_config()), processor
    )
    ids = model.config.task_prompt_ids
    assert set(ids) == set(model.config.task_prompts)
    assert ids["captioning"] == processor.tokenizer(model.config.task_prompts["captioning"])["input_ids"]
    config = ValorConfig(**{**model.config.to_dict(), "task_prompt_ids": {**ids, "qa": [1, 5, 2]}})
    with pytest.raises(ValueError, match="task prompt 'qa' is \\[1, 5, 2\\] in the model"):
        check_processor_matches_model(processor, config)


def test_processor_model_mismatch_is_named(tiny_processor_dir):
    processor = ValorProcessor.from_pretrained(tiny_processor_dir)
    config = ValorConfig(
        **{
            **tiny_model_config(),
            "audio_config": {**tiny_model_config()["audio_config"], "image_size": [32, 128]},
        }
    )
    with pytest.raises(ValueError, match=r"audio clips .*image_size"):
        check_processor_matches_model(processor, config)


def test_initialisation_from_pretrained_single_modality_encoders(tiny_processor_dir, tmp_path):
    from transformers import ASTConfig, ASTModel, BertConfig, BertForMaskedLM

    from transformers_valor import ValorVideoSwinConfig, ValorVideoSwinModel

    processor = ValorProcessor.from_pretrained(tiny_processor_dir)
    torch.manual_seed(0)
    bert = BertForMaskedLM(
        BertConfig(
            vocab_size=len(processor.tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
        )
    )
    bert.save_pretrained(tmp_path / "bert")
    ast = ASTModel(
        ASTConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=37,
            num_mel_bins=32,
            max_length=64,
        )
    )
    ast.save_pretrained(tmp_path / "ast")
    swin = ValorVideoSwinModel(
        ValorVideoSwinConfig(**{**tiny_model_config()["vision_config"], "model_type": None})
    )
    swin.save_pretrained(tmp_path / "swin")

    args = ModelArguments(
        processor=str(tiny_processor_dir),
        config=tiny_model_config(),
        text_encoder=str(tmp_path / "bert"),
        vision_encoder=str(tmp_path / "swin"),
        audio_encoder=str(tmp_path / "ast"),
    )
    model = build_model(args, processor)
    valor = model.valor
    assert torch.equal(
        valor.text_model.encoder.layer[1].attention.self.query.weight,
        bert.bert.encoder.layer[1].attention.self.query.weight,
    )
    assert torch.equal(
        model.cls.predictions.transform.dense.weight, bert.cls.predictions.transform.dense.weight
    )
    audio_state, ast_state = valor.audio_model.state_dict(), ast.state_dict()
    layer_keys = [k for k in ast_state if k.startswith("layers.")]
    assert layer_keys and all(torch.equal(audio_state[k], ast_state[k]) for k in layer_keys)
    assert torch.equal(audio_state["embeddings.cls_token"], ast_state["embeddings.cls_token"])
    assert valor.audio_model.embeddings.position_embeddings.shape[1] == 1 + (32 // 16) * (64 // 16)
    first_swin = next(iter(swin.state_dict().items()))
    assert torch.equal(valor.vision_model.state_dict()[first_swin[0]], first_swin[1])


def test_vision_frozen_stages_freezes_the_video_swin_layers(tiny_processor_dir):
    processor = ValorProcessor.from_pretrained(tiny_processor_dir)
    args = ModelArguments(
        processor=str(tiny_processor_dir), config=tiny_model_config(), vision_frozen_stages=1
    )
    model = build_model(args, processor)
    frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
    assert frozen and all(
        name.startswith(("valor.vision_model.patch_embed.", "valor.vision_model.layers.0."))
        for name in frozen
    )
    assert any(name.startswith("valor.vision_model.layers.1.") for name, _ in model.named_parameters())
    assert "valor.vision_model.layers.1.blocks.0.attn.qkv.weight" not in frozen


def test_vision_frozen_stages_needs_a_video_swin_tower(tiny_processor_dir):
    processor = ValorProcessor.from_pretrained(tiny_processor_dir)
    clip_config = {
        "model_type": "clip_vision_model",
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "intermediate_size": 37,
        "image_size": 32,
        "patch_size": 16,
    }
    config = {**tiny_model_config(), "vision_config": clip_config}
    args = ModelArguments(processor=str(tiny_processor_dir), config=config, vision_frozen_stages=0)
    with pytest.raises(ValueError, match="applies to a Video Swin tower; this model's video tower is CLIP"):
        build_model(args, processor)


def test_vision_frozen_stages_below_minus_one_is_refused():
    with pytest.raises(ValueError, match="`model.vision_frozen_stages` must be >= -1, got -2"):
        ModelArguments(processor="p", vision_frozen_stages=-2)
