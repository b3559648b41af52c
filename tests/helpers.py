"""Tiny configurations, random inputs and the model testers shared by the tests (transformers' test helpers are
not shipped). One tester per tower; `ValorModelTester` composes them into the full model's config and inputs."""

import torch
from transformers import BertTokenizerFast, CLIPVisionConfig

from transformers_valor import (
    ValorAudioConfig,
    ValorConfig,
    ValorFeatureExtractor,
    ValorFeatures,
    ValorForRetrieval,
    ValorModel,
    ValorProcessor,
    ValorTextConfig,
    ValorVideoProcessor,
    ValorVideoSwinConfig,
)
from transformers_valor.configuration_valor import MODALITY_GROUPS

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


# Task prompt ids in the tiny vocabulary, `[CLS] words [SEP]`, one set of words per prompt.
TINY_TASK_PROMPT_IDS = {
    "retrieval": [CLS, 11, 12, 13, 14, SEP],
    "captioning": [CLS, 21, 22, 23, SEP],
    "qa": [CLS, 31, 32, 33, SEP],
    "mlm_tva": [CLS, 41, 42, 43, 44, SEP],
    "mlm_tv": [CLS, 41, 42, 45, SEP],
    "mlm_ta": [CLS, 41, 42, 46, SEP],
}


def tiny_clip_vision_config():
    """A tiny CLIP vision tower (VALOR-L's video encoder, per frame): 32-px frames, patch 8, width 24."""
    return CLIPVisionConfig(
        hidden_size=24,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        patch_size=8,
        image_size=32,
    )


def tiny_valor_l_config(**overrides) -> ValorConfig:
    """A VALOR-L-shaped tiny configuration: `tiny_clip_vision_config` and the task prompts on, with
    `TINY_TASK_PROMPT_IDS`; keyword arguments override fields."""
    kwargs = dict(
        vision_config=tiny_clip_vision_config(), use_task_prompt=True, task_prompt_ids=TINY_TASK_PROMPT_IDS
    )
    kwargs.update(overrides)
    return tiny_valor_config(**kwargs)


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


TINY_WORDS = ["a", "dog", "cat", "man", "what", "is", "the", "playing", "guitar", "barks", "sound", "of"]


def tiny_processor() -> ValorProcessor:
    """A processor matching `tiny_valor_config`: vocabulary of 99 (special ids 0-3), 4 frames of 32 px, 2 audio
    clips of 16 mel bins x 32 frames (the tiny audio ViT's `image_size`)."""
    words = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"] + TINY_WORDS
    words += [f"w{i}" for i in range(99 - len(words))]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)
    video_processor = ValorVideoProcessor(num_frames=4, size={"height": 32, "width": 32})
    feature_extractor = ValorFeatureExtractor(
        num_mel_bins=16, clip_length=32, num_clips=2, sampling_rate=16000
    )
    return ValorProcessor(
        tokenizer=tokenizer,
        video_processor=video_processor,
        feature_extractor=feature_extractor,
        max_text_length=16,
    )


class GalleryTester:
    """
    A seeded tiny [`ValorModel`] and the MGA features of a gallery of `num_items` items computed by its own heads
    from random encoder outputs (4 frames, 2 audio clips; item 1 has one valid clip, item 2 no sound), plus text
    queries. Item `i`'s features do not depend on how the items are split into calls.
    """

    def __init__(self, num_items: int = 12, num_frames: int = 4, num_clips: int = 2, num_queries: int = 3):
        self.num_items, self.num_frames, self.num_clips, self.num_queries = (
            num_items,
            num_frames,
            num_clips,
            num_queries,
        )

    def create_model(self, seed: int = 0, **overrides) -> ValorModel:
        """A seeded tiny `ValorModel` in eval mode."""
        return ValorModelTester().create_model(ValorModel, seed=seed, **overrides)

    def ids(self, rows: slice = slice(None)) -> list[str]:
        """Item ids `item00`, `item01`, ..."""
        return [f"item{i:02d}" for i in range(self.num_items)][rows]

    @torch.no_grad()
    def media_features(self, model: ValorModel, rows: slice = slice(None)) -> dict[str, ValorFeatures]:
        """`{"video": ..., "audio": ...}` features of the items in `rows`."""
        config = model.config
        frames = seeded_floats((self.num_items, self.num_frames, config.vision_config.hidden_size), seed=1)
        clips = seeded_floats((self.num_items, self.num_clips, config.audio_config.hidden_size), seed=2)
        mask = torch.ones(self.num_items, self.num_clips, dtype=torch.long)
        mask[1, 1:] = 0
        mask[2] = 0
        # Computed for every item, then sliced: a matmul's last bits depend on its batch size.
        every = {
            "video": model.video_features_from_frames(frames),
            "audio": model.audio_features_from_clips(clips, mask),
        }
        return {m: ValorFeatures(**{k: v[rows] for k, v in f.items()}) for m, f in every.items()}

    def gallery(self, model: ValorModel, rows: slice = slice(None), path=None, **create_kwargs):
        """A [`VideoGallery`] (in memory, or saved in `path`) holding the items `rows`, paths `/videos/<id>.mp4`."""
        from transformers_valor.retrieval import VideoGallery

        gallery = VideoGallery.create(model, path=path, **create_kwargs)
        paths = [f"/videos/{i}.mp4" for i in self.ids(rows)]
        gallery.add(self.ids(rows), paths=paths, **self.media_features(model, rows))
        return gallery

    @torch.no_grad()
    def text_features(self, model: ValorModel) -> ValorFeatures:
        """Text features of `num_queries` seeded captions with some padding."""
        inputs = ValorInputsTester(batch_size=self.num_queries, text_length=7, seed=3).prepare_inputs()
        return model.get_text_features(inputs["input_ids"], inputs["attention_mask"])


def raw_retrieval_scores(output, group: str) -> torch.Tensor:
    """The `(queries, candidates)` MGA scores of a `ValorRetrievalOutput` for `group`, before `logit_scale`."""
    rows_name, _ = MODALITY_GROUPS[group].logits_names
    return getattr(output, rows_name) / output.logit_scale
