"""Tests of transformers_valor.metrics.cider_d: the CIDEr-D scorer of SCST against hand-computed values and
the COCO toolkit's per-sample scores."""

import random

import numpy as np
import pytest

from test_metrics_captioning import CIDER_PREDICTIONS, CIDER_REFERENCES, CIDER_SAMPLE_1
from transformers_valor.metrics import CiderD


def test_cider_d_scorer_hand_computed():
    scorer = CiderD(CIDER_REFERENCES)
    np.testing.assert_allclose(
        scorer.score(CIDER_PREDICTIONS, CIDER_REFERENCES), [CIDER_SAMPLE_1, 7.5], atol=1e-9
    )


def test_cider_d_scorer_matches_toolkit_per_sample():
    from pycocoevalcap.cider.cider import Cider

    rng = random.Random(0)
    words = "a the man woman dog cat is are playing running on in park guitar ball red with and two".split()

    def sentence():
        return " ".join(rng.choice(words) for _ in range(rng.randint(2, 12)))

    refs = [[sentence() for _ in range(rng.randint(1, 5))] for _ in range(40)]
    cands = [sentence() for _ in range(40)]
    _, expected = Cider().compute_score(dict(enumerate(refs)), {i: [c] for i, c in enumerate(cands)})
    scorer = CiderD(refs, tokenizer="none")
    np.testing.assert_allclose(scorer.score(cands, refs), expected, atol=1e-12)
    # Several candidates per reference set, as in SCST (5 samples per video), and references outside the corpus.
    many = scorer.score(cands[:3] * 5, refs[:3] * 5)
    np.testing.assert_allclose(many, np.tile(expected[:3], 5), atol=1e-12)
    unseen = scorer.score(
        ["zebra plays a xylophone", "zebra plays a xylophone"], [["zebra plays a xylophone"]] * 2
    )
    assert unseen.shape == (2,) and unseen[0] == unseen[1] > 0


def test_cider_d_scorer_bad_input():
    with pytest.raises(ValueError, match="refs_corpus is empty"):
        CiderD([])
    scorer = CiderD(CIDER_REFERENCES)
    with pytest.raises(ValueError, match="different lengths"):
        scorer.score(["a dog"], CIDER_REFERENCES)
