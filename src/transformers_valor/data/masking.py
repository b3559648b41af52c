"""VALOR's token masking (the reference's `TokenMasker`), shared by the collator, the scripts and the tests.

Every non-padding token after [CLS] is masked with a probability that depends on the objective (0.6 for the MGC
caption objective `unimlm`, 0.15 for conditioned MLM, 0.99 for question-answering answers), at least one per
sentence: like the reference, which redraws a sentence until one token is drawn, a sentence without any draw is
drawn again, so the masked set follows the Bernoulli draws conditioned on being non-empty. A masked token becomes
[MASK] 80% of the time, a random token 10%, and stays unchanged 10%. Labels hold the original token at masked
positions and -100 elsewhere. Everything is vectorised over the batch and driven by an explicit
`torch.Generator`, so a seed reproduces the masking exactly.
"""

from dataclasses import dataclass

import torch

# The reference's masking rates (`text_masker(tokens, p)` in `model/pretrain.py`).
CAPTION_MASK_PROBABILITY = 0.6
MLM_MASK_PROBABILITY = 0.15
ANSWER_MASK_PROBABILITY = 0.99


@dataclass
class CaptionMaskingConfig:
    """
    Parameters of the `unimlm` masking.

    Args:
        mask_token_id (`int`): id of [MASK].
        pad_token_id (`int`): id of [PAD]; padding is never masked.
        random_token_range (`tuple[int, int]`): half-open id range random replacements are drawn from
            (BERT uncased: 106..30522, i.e. everything after the special and unused entries).
        mask_probability (`float`, defaults to 0.6): probability that an eligible token is masked
            (`CAPTION_MASK_PROBABILITY`; `MLM_MASK_PROBABILITY` and `ANSWER_MASK_PROBABILITY` for the others).
        mask_replace_probability (`float`, defaults to 0.8): share of masked tokens set to [MASK].
        random_replace_probability (`float`, defaults to 0.1): share of masked tokens set to a random id; the
            rest keep their original id.
    """

    mask_token_id: int
    pad_token_id: int
    random_token_range: tuple[int, int]
    mask_probability: float = CAPTION_MASK_PROBABILITY
    mask_replace_probability: float = 0.8
    random_replace_probability: float = 0.1

    def __post_init__(self):
        low, high = self.random_token_range
        if not 0 <= low < high:
            raise ValueError(
                f"`random_token_range` must be a non-empty range [low, high), got {self.random_token_range}."
            )
        if not 0.0 < self.mask_probability <= 1.0:
            raise ValueError(f"`mask_probability` must lie in (0, 1], got {self.mask_probability}.")
        if self.mask_replace_probability + self.random_replace_probability > 1.0:
            raise ValueError("`mask_replace_probability + random_replace_probability` must not exceed 1.")

    @classmethod
    def from_model_config(cls, text_config, **kwargs) -> "CaptionMaskingConfig":
        """Build it from a [`ValorTextConfig`] (special ids, vocabulary size, `random_token_start`)."""
        return cls(
            mask_token_id=text_config.mask_token_id,
            pad_token_id=text_config.pad_token_id,
            random_token_range=(text_config.random_token_start, text_config.vocab_size),
            **kwargs,
        )


def mask_captions(
    input_ids: torch.LongTensor,
    config: CaptionMaskingConfig,
    generator: torch.Generator | None = None,
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """
    Apply VALOR's token masking (MGC `unimlm`, conditioned MLM, QA answers: `config.mask_probability`) to a batch
    of captions `[CLS] w1 .. wn [SEP] [PAD]..`.

    Args:
        input_ids (`torch.LongTensor` of shape `(batch_size, length)`): tokenised captions; the input is not modified.
        config ([`CaptionMaskingConfig`]): the masking parameters.
        generator (`torch.Generator`, *optional*): source of randomness, for reproducibility.

    Returns:
        `(masked_input_ids, labels)`, both `(batch_size, length)`; labels are -100 where nothing is predicted.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"`input_ids` must have shape (batch, length), got {tuple(input_ids.shape)}.")
    device = input_ids.device
    eligible = input_ids != config.pad_token_id
    eligible[:, 0] = False  # never the [CLS]
    if not bool(eligible.any(dim=1).all()):
        empty = (~eligible.any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(f"captions at batch indices {empty} have no token after [CLS] to mask.")

    def uniform(*shape):
        return torch.rand(*shape, generator=generator, device=generator.device if generator else "cpu").to(
            device
        )

    masked = (uniform(*input_ids.shape) < config.mask_probability) & eligible
    empty = ~masked.any(dim=1)
    while bool(empty.any()):  # at least one masked token per sentence: draw those sentences again
        redraw = (uniform(int(empty.sum()), input_ids.shape[1]) < config.mask_probability) & eligible[empty]
        masked[empty] = redraw
        empty = ~masked.any(dim=1)

    labels = input_ids.masked_fill(~masked, -100)
    choice = uniform(*input_ids.shape)
    to_mask = masked & (choice < config.mask_replace_probability)
    to_random = (
        masked
        & (choice >= config.mask_replace_probability)
        & (choice < config.mask_replace_probability + config.random_replace_probability)
    )
    low, high = config.random_token_range
    random_ids = torch.randint(
        low, high, input_ids.shape, generator=generator, device=generator.device if generator else "cpu"
    ).to(device)
    masked_ids = input_ids.masked_fill(to_mask, config.mask_token_id)
    masked_ids = torch.where(to_random, random_ids, masked_ids)
    return masked_ids, labels


def next_token_labels(input_ids: torch.LongTensor, pad_token_id: int) -> torch.LongTensor:
    """Labels of the plain `lm` objective: the caption itself with padding set to -100 (the model shifts)."""
    return input_ids.masked_fill(input_ids == pad_token_id, -100)
