"""Tiny configurations and random inputs shared by the tests (transformers' test helpers are not shipped)."""

import torch

from transformers_valor import ValorConfig

# Special ids of the tiny vocabulary used by the model tests.
PAD, CLS, SEP, MASK = 0, 1, 2, 3
FIRST_WORD_ID = 5
VOCAB_SIZE = 99


def ids_tensor(shape, vocab_size=VOCAB_SIZE, generator=None) -> torch.LongTensor:
    """Random word ids in [FIRST_WORD_ID, vocab_size)."""
    return torch.randint(FIRST_WORD_ID, vocab_size, shape, generator=generator)


def floats_tensor(shape, generator=None) -> torch.FloatTensor:
    """Standard-normal floats."""
    return torch.randn(shape, generator=generator)


def tiny_text_config(**overrides) -> dict:
    """A BERT-style text tower of hidden 32, 2 layers, 4 heads, intermediate 37, vocabulary 99."""
    config = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=PAD,
        bos_token_id=CLS,
        eos_token_id=SEP,
        mask_token_id=MASK,
        random_token_start=FIRST_WORD_ID,
    )
    config.update(overrides)
    return config


def tiny_video_swin_config(**overrides) -> dict:
    """A two-stage Video Swin for 32-px frames (window 2 x 4 x 4)."""
    config = dict(
        model_type="valor_video_swin",
        image_size=32,
        embed_dim=16,
        depths=[1, 1],
        num_heads=[2, 4],
        window_size=[2, 4, 4],
        drop_path_rate=0.0,
    )
    config.update(overrides)
    return config


def tiny_audio_config(**overrides) -> dict:
    """An AST-style ViT on 16 mel x 32 frame clips with 8 x 8 patches."""
    config = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=[16, 32],
        patch_size=8,
    )
    config.update(overrides)
    return config


def tiny_valor_config(**overrides) -> ValorConfig:
    """A complete tiny VALOR configuration; keyword arguments override ValorConfig fields."""
    kwargs = dict(
        text_config=tiny_text_config(),
        vision_config=tiny_video_swin_config(),
        audio_config=tiny_audio_config(),
        projection_dim=16,
        max_video_frames=8,
        max_audio_clips=4,
    )
    kwargs.update(overrides)
    return ValorConfig(**kwargs)


class ValorInputsTester:
    """Builds tiny, seeded VALOR inputs: captions with padding, 4-frame 32-px videos and 2 audio clips."""

    def __init__(self, batch_size=3, text_length=7, num_frames=4, num_clips=2, image_size=32, seed=0):
        self.batch_size = batch_size
        self.text_length = text_length
        self.num_frames = num_frames
        self.num_clips = num_clips
        self.image_size = image_size
        self.seed = seed

    def prepare_inputs(self) -> dict:
        """input_ids/attention_mask ([CLS] words [SEP] [PAD]..), pixel_values_videos, input_features(+mask)."""
        generator = torch.Generator().manual_seed(self.seed)
        ids = ids_tensor((self.batch_size, self.text_length), generator=generator)
        lengths = torch.arange(self.batch_size) % 3  # 0, 1 or 2 padding tokens per row
        positions = torch.arange(self.text_length)[None]
        last = self.text_length - 1 - lengths[:, None]
        ids[:, 0] = CLS
        ids = torch.where(positions == last, torch.full_like(ids, SEP), ids)
        ids = torch.where(positions > last, torch.full_like(ids, PAD), ids)
        return {
            "input_ids": ids,
            "attention_mask": (ids != PAD).long(),
            "pixel_values_videos": floats_tensor(
                (self.batch_size, self.num_frames, 3, self.image_size, self.image_size), generator
            ),
            "input_features": floats_tensor((self.batch_size, self.num_clips, 16, 32), generator),
            "input_features_mask": torch.ones(self.batch_size, self.num_clips, dtype=torch.long),
        }
