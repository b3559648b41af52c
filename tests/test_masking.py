"""VALOR's unimlm caption masking: statistics, guarantees and reproducibility."""

import pytest
import torch

from transformers_valor.data.masking import (
    ANSWER_MASK_PROBABILITY,
    CAPTION_MASK_PROBABILITY,
    MLM_MASK_PROBABILITY,
    CaptionMaskingConfig,
    mask_captions,
    next_token_labels,
)

CONFIG = CaptionMaskingConfig(mask_token_id=103, pad_token_id=0, random_token_range=(106, 30522))


def _captions(batch=4000, length=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (batch, length), generator=g)
    ids[:, 0] = 101
    lengths = torch.randint(2, length + 1, (batch, 1), generator=g)
    ids[torch.arange(length)[None] >= lengths] = 0
    return ids


def test_masking_statistics():
    ids = _captions()
    masked_ids, labels = mask_captions(ids, CONFIG, torch.Generator().manual_seed(0))
    eligible = ids != 0
    eligible[:, 0] = False
    masked = labels != -100
    assert not (masked & ~eligible).any(), "padding or [CLS] was masked"
    assert masked.any(dim=1).all(), "a sentence has no masked token"
    # 0.6 of eligible tokens (sentences without any draw are drawn again, which barely moves the share at 0.6).
    assert abs(masked.sum() / eligible.sum() - 0.6) < 0.02
    share_mask = (masked_ids[masked] == 103).float().mean()
    changed_random = (masked_ids[masked] != 103) & (masked_ids[masked] != ids[masked])
    share_keep = (masked_ids[masked] == ids[masked]).float().mean()
    assert abs(share_mask - 0.8) < 0.02
    assert abs(changed_random.float().mean() - 0.1) < 0.02
    assert abs(share_keep - 0.1) < 0.02
    assert (masked_ids[~masked] == ids[~masked]).all()
    assert (labels[masked] == ids[masked]).all()
    random_ids = masked_ids[masked][changed_random]
    assert random_ids.min() >= 106 and random_ids.max() < 30522


def test_masking_is_seeded_and_leaves_input_untouched():
    ids = _captions(64)
    before = ids.clone()
    first = mask_captions(ids, CONFIG, torch.Generator().manual_seed(3))
    second = mask_captions(ids, CONFIG, torch.Generator().manual_seed(3))
    third = mask_captions(ids, CONFIG, torch.Generator().manual_seed(4))
    assert torch.equal(ids, before)
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    assert not torch.equal(first[0], third[0])


def test_single_word_sentence_is_masked():
    ids = torch.tensor([[101, 2000, 0, 0]])
    _, labels = mask_captions(ids, CaptionMaskingConfig(103, 0, (106, 30522), mask_probability=0.01))
    assert labels.tolist() == [[-100, 2000, -100, -100]]


def test_errors():
    with pytest.raises(ValueError, match="no token after"):
        mask_captions(torch.tensor([[101, 0, 0]]), CONFIG)
    with pytest.raises(ValueError, match="random_token_range"):
        CaptionMaskingConfig(103, 0, (10, 5))
    with pytest.raises(ValueError, match="mask_probability"):
        CaptionMaskingConfig(103, 0, (10, 50), mask_probability=0.0)


def test_next_token_labels():
    assert next_token_labels(torch.tensor([[101, 7, 102, 0]]), 0).tolist() == [[101, 7, 102, -100]]


def reference_mask_counts(ids, probability, seed, draws=1):
    """How many tokens of each sentence the reference's `TokenMasker` masks: Bernoulli draws over the
    non-padding tokens after [CLS], the sentence drawn again while none is masked (plain Python, its loop)."""
    import random

    rng = random.Random(seed)
    counts = []
    for _ in range(draws):
        for row in ids.tolist():
            eligible = [token != 0 for token in row[1:]]
            chosen = [False]
            while not any(chosen):
                chosen = [ok and rng.random() < probability for ok in eligible]
            counts.append(sum(chosen))
    return torch.tensor(counts, dtype=torch.float)


@pytest.mark.parametrize(
    "probability", [MLM_MASK_PROBABILITY, ANSWER_MASK_PROBABILITY, CAPTION_MASK_PROBABILITY]
)
def test_masked_counts_follow_the_reference_distribution(probability):
    """Conditioned MLM (0.15), QA answers (0.99) and MGC (0.6): the number of masked tokens per sentence has the
    reference's distribution (draws conditioned on at least one), not that of forcing one token into empty draws
    (which, at 0.15 on short sentences, masks about 0.17 fewer tokens per sentence)."""
    ids = _captions(batch=6000, length=8, seed=1)
    config = CaptionMaskingConfig(103, 0, (106, 30522), mask_probability=probability)
    _, labels = mask_captions(ids, config, torch.Generator().manual_seed(0))
    ours = (labels != -100).sum(dim=1).float()
    reference = reference_mask_counts(ids, probability, seed=0)
    assert abs(ours.mean() - reference.mean()) < 0.04, (ours.mean(), reference.mean())
    for count in range(1, 4):
        assert abs((ours == count).float().mean() - (reference == count).float().mean()) < 0.02
    forced = reference_forced_counts(ids, probability, seed=0)
    if probability == MLM_MASK_PROBABILITY:
        assert abs(forced.mean() - reference.mean()) > 0.1  # the other rule is told apart at this sample size


def reference_forced_counts(ids, probability, seed):
    """The rule this module used before: one Bernoulli pass, then one forced token in sentences left empty."""
    import random

    rng = random.Random(seed)
    counts = []
    for row in ids.tolist():
        eligible = [token != 0 for token in row[1:]]
        chosen = sum(ok and rng.random() < probability for ok in eligible)
        counts.append(max(chosen, 1))
    return torch.tensor(counts, dtype=torch.float)


def test_mlm_replacement_shares():
    ids = _captions(batch=6000, length=12, seed=2)
    config = CaptionMaskingConfig(103, 0, (106, 30522), mask_probability=MLM_MASK_PROBABILITY)
    masked_ids, labels = mask_captions(ids, config, torch.Generator().manual_seed(1))
    masked = labels != -100
    assert (masked_ids[masked] == 103).float().mean().item() == pytest.approx(0.8, abs=0.02)
    kept = (masked_ids[masked] == ids[masked]).float().mean().item()
    assert kept == pytest.approx(0.1, abs=0.02)
