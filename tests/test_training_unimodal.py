"""Stage 0 of the demo recipe (`training/unimodal.py`): the tower trainers, their checkpoints and the config."""

from pathlib import Path

import pytest
import torch
from transformers import ASTForAudioClassification, BertForMaskedLM

from helpers import tiny_processor
from transformers_valor import ValorVideoSwinModel
from transformers_valor.conversion import init_from_encoders
from transformers_valor.training.unimodal import (
    CorpusArguments,
    TowerTrainingArguments,
    UnimodalConfig,
    VideoAttributeClassifier,
    VideoTowerArguments,
    load_unimodal_config,
    run_unimodal_pretraining,
    train_steps,
)

REPO = Path(__file__).resolve().parent.parent

TINY_SWIN = dict(
    image_size=32, patch_size=[2, 4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=[2, 4, 4]
)
TINY_AST = dict(
    hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, patch_size=16
)
TINY_BERT = dict(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=37,
    max_position_embeddings=64,
)


def tiny_unimodal_config(steps: int = 2) -> UnimodalConfig:
    """Three tiny towers trained `steps` steps each on 12 clips (4 held out)."""
    return UnimodalConfig(
        corpus=CorpusArguments(num_clips=12, num_heldout=4, motion_trail=1),
        video=VideoTowerArguments(
            config=TINY_SWIN, steps=steps, batch_size=4, head_pooling="max", horizontal_flip=True
        ),
        audio=TowerTrainingArguments(config=TINY_AST, steps=steps, batch_size=4),
        text=TowerTrainingArguments(config=TINY_BERT, steps=steps, batch_size=8),
    )


@pytest.fixture(scope="module")
def stage0(tmp_path_factory):
    """A finished tiny stage 0: its output folder and the three checkpoint folders."""
    out = tmp_path_factory.mktemp("stage0")
    folders = run_unimodal_pretraining(tiny_unimodal_config(), tiny_processor(), out, seed=0)
    return out, folders


def test_stage0_saves_a_standard_checkpoint_of_each_tower_class(stage0):
    out, folders = stage0
    video = ValorVideoSwinModel.from_pretrained(folders["video"])
    assert video.config.embed_dim == 16
    audio = ASTForAudioClassification.from_pretrained(folders["audio"])
    assert audio.config.id2label[0] == "high_beep" and audio.config.num_labels == 6
    assert (audio.config.num_mel_bins, audio.config.max_length) == (16, 32)  # the processor's fbank clips
    text = BertForMaskedLM.from_pretrained(folders["text"])
    assert text.config.vocab_size == len(tiny_processor().tokenizer)
    assert (folders["text"] / "tokenizer_config.json").is_file()
    assert not any(path.name.startswith(".tmp-") for path in out.iterdir())  # written beside, then renamed


def test_stage0_logs_every_step_and_the_heldout_accuracy(stage0):
    import json

    out, _ = stage0
    rows = [json.loads(line) for line in (out / "unimodal_metrics.jsonl").read_text().splitlines()]
    assert [(r["tower"], r["step"]) for r in rows] == [
        (t, s) for t in ("video", "audio", "text") for s in (1, 2)
    ]
    summary = json.loads((out / "unimodal_summary.json").read_text())
    accuracy = summary["heldout_accuracy"]
    assert set(accuracy["video"]) == {"color", "shape", "direction"}
    assert set(accuracy["audio"]) == {"sound"} and set(accuracy["text"]) == {"masked_token"}
    assert all(0.0 <= v <= 1.0 for tower in accuracy.values() for v in tower.values())


def test_init_from_encoders_takes_the_stage0_checkpoints(stage0):
    _, folders = stage0
    model, report = init_from_encoders(
        text=str(folders["text"]),
        vision=str(folders["video"]),
        audio=str(folders["audio"]),
        image_size=32,
        audio_config={"image_size": [16, 32]},
    )
    video = ValorVideoSwinModel.from_pretrained(folders["video"])
    audio = ASTForAudioClassification.from_pretrained(folders["audio"])
    torch.testing.assert_close(
        model.valor.vision_model.patch_embed.proj.weight, video.patch_embed.proj.weight, rtol=0, atol=0
    )
    ast_patches = audio.audio_spectrogram_transformer.embeddings.patch_embeddings.projection.weight
    torch.testing.assert_close(
        model.valor.audio_model.embeddings.patch_embeddings.projection.weight, ast_patches, rtol=0, atol=0
    )
    assert {"text", "vision", "audio"} <= set(report.copied.values())


def test_train_steps_fits_a_learnable_problem():
    torch.manual_seed(0)
    inputs, targets = torch.randn(64, 4), torch.randint(0, 2, (64,))
    module = torch.nn.Linear(4, 2)
    inputs[:, 0] += 3 * (2 * targets - 1)  # the class is the sign of the first feature

    def batch_loss(indices):
        return torch.nn.functional.cross_entropy(module(inputs[indices]), targets[indices])

    args = TowerTrainingArguments(steps=60, batch_size=16, learning_rate=0.1, warmup_ratio=0.0)
    losses = train_steps(module, batch_loss, 64, args, seed=0)
    assert len(losses) == 60 and sum(losses[-5:]) / 5 < 0.1 < sum(losses[:5]) / 5


def test_train_steps_stops_on_a_non_finite_loss():
    module = torch.nn.Linear(2, 1)
    with pytest.raises(FloatingPointError, match="step 1"):
        train_steps(
            module, lambda idx: module.weight.sum() * float("nan"), 4, TowerTrainingArguments(steps=2), 0
        )


def test_demo_stage0_config_loads_and_overrides_are_checked():
    config = load_unimodal_config(REPO / "examples" / "configs" / "demo_unimodal.yaml", ["video.steps=7"])
    assert config.video.steps == 7 and config.video.config["image_size"] == 64
    with pytest.raises(ValueError, match="stepz"):
        load_unimodal_config(REPO / "examples" / "configs" / "demo_unimodal.yaml", ["video.stepz=7"])
    with pytest.raises(ValueError, match="video.steps"):
        load_unimodal_config(REPO / "examples" / "configs" / "demo_unimodal.yaml", ["video.steps=2.5"])


def test_corpus_arguments_need_training_clips():
    with pytest.raises(ValueError, match="num_clips"):
        CorpusArguments(num_clips=10, num_heldout=10)


def test_video_heads_read_the_slot_mean_or_the_slot_maximum():
    from transformers_valor import ValorVideoSwinConfig

    torch.manual_seed(0)
    mean_heads = VideoAttributeClassifier(ValorVideoSwinConfig(**TINY_SWIN)).eval()
    max_heads = VideoAttributeClassifier(ValorVideoSwinConfig(**TINY_SWIN), pooling="max").eval()
    max_heads.load_state_dict(mean_heads.state_dict())
    pixels = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        tokens = mean_heads.tower(pixels).last_hidden_state  # (B, T', tokens, C)
        head = mean_heads.heads["shape"]
        torch.testing.assert_close(mean_heads(pixels)["shape"], head(tokens.mean(dim=2)))
        torch.testing.assert_close(max_heads(pixels)["shape"], head(tokens.amax(dim=2)))
    with pytest.raises(ValueError, match="pooling"):
        VideoAttributeClassifier(ValorVideoSwinConfig(**TINY_SWIN), pooling="attention")
    with pytest.raises(ValueError, match="head_pooling"):
        load_unimodal_config(
            REPO / "examples" / "configs" / "demo_unimodal.yaml", ["video.head_pooling=median"]
        )
    with pytest.raises(ValueError, match="head_pooling"):
        load_unimodal_config(REPO / "examples" / "configs" / "demo_unimodal.yaml", ["audio.head_pooling=max"])


def test_mirrored_batches_flip_half_the_clips_and_swap_left_and_right():
    from transformers_valor.data.synthetic import COLORS, DIRECTIONS, SHAPES
    from transformers_valor.training.unimodal import _MirroredBatches

    pixels = torch.randn(64, 4, 3, 8, 8)
    labels = {
        "color": torch.randint(len(COLORS), (64,)),
        "shape": torch.randint(len(SHAPES), (64,)),
        "direction": torch.arange(64) % len(DIRECTIONS),
    }
    mirrored, targets = _MirroredBatches(seed=0)(pixels, labels)
    flipped = (mirrored != pixels).flatten(1).any(dim=1)
    assert 16 < int(flipped.sum()) < 48
    torch.testing.assert_close(mirrored[flipped], pixels[flipped].flip(-1), rtol=0, atol=0)
    swap = {"left": "right", "right": "left"}
    names = [DIRECTIONS[i] for i in labels["direction"].tolist()]
    expected = [
        DIRECTIONS.index(swap.get(n, n)) if f else DIRECTIONS.index(n) for n, f in zip(names, flipped)
    ]
    assert targets["direction"].tolist() == expected
    assert torch.equal(targets["shape"], labels["shape"]) and torch.equal(targets["color"], labels["color"])
