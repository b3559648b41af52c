"""Tiny configurations, random inputs and the model testers shared by the tests (transformers' test helpers are
not shipped). One tester per tower; `ValorModelTester` composes them into the full model's config and inputs."""

import torch

from transformers_valor import (
    ValorAudioConfig,
    ValorConfig,
    ValorForRetrieval,
    ValorTextConfig,
    ValorVideoSwinConfig,
)

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


def seeded_floats(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Reproducible standard-normal tensor."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


class ValorTextModelTester:
    """The text tower: a BERT-style transformer of hidden 32, 2 layers, 4 heads, intermediate 37, vocabulary 99."""

    def __init__(self, batch_size=2, seq_length=6):
        self.batch_size = batch_size
        self.seq_length = seq_length

    @staticmethod
    def config_dict(**overrides) -> dict:
        """The tower's config as keyword arguments (what `ValorConfig(text_config=...)` takes)."""
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

    def get_config(self, **overrides) -> ValorTextConfig:
        """A `ValorTextConfig`."""
        return ValorTextConfig(**self.config_dict(**overrides))

    def prepare_inputs(self, seed=0):
        """`input_ids` and an `attention_mask` with two padding positions in the last row."""
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(5, 99, (self.batch_size, self.seq_length), generator=g)
        mask = torch.ones_like(ids)
        mask[-1, -2:] = 0
        return ids, mask


class ValorVideoSwinModelTester:
    """The Video Swin tower: 2 stages, a window smaller than the token grid, 3 frames of 24 px by default."""

    def __init__(
        self,
        batch_size: int = 2,
        num_frames: int = 3,
        image_size: int = 24,
        embed_dim: int = 16,
        depths: tuple[int, ...] = (1, 2),
        num_heads: tuple[int, ...] = (2, 4),
        window_size: tuple[int, int, int] = (2, 3, 3),
        mlp_ratio: float = 2.0,
    ):
        self.batch_size = batch_size
        self.num_frames = num_frames
        self.image_size = image_size
        self.embed_dim = embed_dim
        self.depths = list(depths)
        self.num_heads = list(num_heads)
        self.window_size = list(window_size)
        self.mlp_ratio = mlp_ratio

    def config_dict(self, **overrides) -> dict:
        """No dropout or drop path, so that outputs are deterministic in training mode too."""
        config = {
            "model_type": "valor_video_swin",
            "image_size": self.image_size,
            "embed_dim": self.embed_dim,
            "depths": self.depths,
            "num_heads": self.num_heads,
            "window_size": self.window_size,
            "mlp_ratio": self.mlp_ratio,
            "drop_path_rate": 0.0,
        }
        config.update(overrides)
        return config

    def get_config(self, **overrides) -> ValorVideoSwinConfig:
        """A `ValorVideoSwinConfig`."""
        config = self.config_dict(**overrides)
        config.pop("model_type")
        return ValorVideoSwinConfig(**config)

    def prepare_inputs(
        self, num_frames: int | None = None, height: int | None = None, width: int | None = None
    ):
        """`pixel_values_videos` of shape (batch, frames, 3, height, width)."""
        frames = num_frames or self.num_frames
        return seeded_floats(
            (self.batch_size, frames, 3, height or self.image_size, width or self.image_size)
        )

    def create_model(self, seed: int = 0, **overrides):
        """A seeded model in eval mode."""
        from transformers_valor import ValorVideoSwinModel

        torch.manual_seed(seed)
        return ValorVideoSwinModel(self.get_config(**overrides)).eval()

    def expected_grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid of the last stage for a frame size."""
        grid_h, grid_w = -(-height // 4), -(-width // 4)
        for _ in range(len(self.depths) - 1):
            grid_h, grid_w = -(-grid_h // 2), -(-grid_w // 2)
        return grid_h, grid_w

    @property
    def hidden_size(self) -> int:
        """Width of the last stage."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)


class ValorAudioModelTester:
    """The audio tower: an AST-style ViT on 16 mel x 32 frame clips with 8 x 8 patches, 2 clips per sample."""

    def __init__(self, batch_size: int = 2, num_clips: int = 2):
        self.batch_size = batch_size
        self.num_clips = num_clips

    @staticmethod
    def config_dict(**overrides) -> dict:
        """The tower's config as keyword arguments."""
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

    def get_config(self, **overrides) -> ValorAudioConfig:
        """A `ValorAudioConfig`."""
        return ValorAudioConfig(**self.config_dict(**overrides))

    def prepare_inputs(self, seed: int = 0) -> torch.Tensor:
        """`input_features` of shape (batch, clips, mel, time)."""
        mel, time = self.config_dict()["image_size"]
        return seeded_floats((self.batch_size, self.num_clips, mel, time), seed)


# The tower testers the full model is built from (32-px frames, window 2 x 4 x 4 for Video Swin).
TEXT_TESTER = ValorTextModelTester()
VIDEO_TESTER = ValorVideoSwinModelTester(
    image_size=32, depths=(1, 1), num_heads=(2, 4), window_size=(2, 4, 4), mlp_ratio=4.0
)
AUDIO_TESTER = ValorAudioModelTester()


def tiny_text_config(**overrides) -> dict:
    """The text tower tester's config dict."""
    return TEXT_TESTER.config_dict(**overrides)


def tiny_video_swin_config(**overrides) -> dict:
    """The Video Swin tower tester's config dict for the full model (32-px frames)."""
    return VIDEO_TESTER.config_dict(**overrides)


def tiny_audio_config(**overrides) -> dict:
    """The audio tower tester's config dict."""
    return AUDIO_TESTER.config_dict(**overrides)


def tiny_valor_config(**overrides) -> ValorConfig:
    """A complete tiny VALOR configuration composed from the tower testers; keyword arguments override fields."""
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


class ValorModelTester:
    """The full model: the tiny config composed from the tower testers, and a seeded batch."""

    def __init__(self, **config_overrides):
        self.config_overrides = config_overrides
        self.inputs = ValorInputsTester()

    def get_config(self, **overrides) -> ValorConfig:
        """`tiny_valor_config` with the tester's and the call's overrides."""
        return tiny_valor_config(**{**self.config_overrides, **overrides})

    def prepare_inputs(self) -> dict:
        """Text, 4-frame videos and 2 audio clips for 3 samples."""
        return self.inputs.prepare_inputs()

    def create_model(self, cls=ValorForRetrieval, seed=0, **overrides):
        """A seeded model of class `cls` in eval mode."""
        torch.manual_seed(seed)
        return cls(self.get_config(**overrides)).eval()
