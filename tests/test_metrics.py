"""Tests of transformers_valor.metrics: captioning scores against hand-computed values, retrieval ranks,
the CIDEr-D scorer for SCST, and offline loading through `evaluate`."""

import json
import math
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from transformers_valor import metrics as valor_metrics
from transformers_valor.metrics import (
    CiderD,
    compute_caption_metrics,
    compute_retrieval_metrics,
    compute_text_video_retrieval_metrics,
    ptb_tokenize,
    retrieval_ranks,
)

requires_java = pytest.mark.skipif(
    shutil.which("java") is None, reason="METEOR and the PTB tokenizer need java"
)
NO_JAVA = ["BLEU", "ROUGE-L", "CIDEr"]


# ------------------------------------------------------------------------------------------------------
# BLEU and ROUGE-L, by hand
# ------------------------------------------------------------------------------------------------------


def test_bleu_rouge_same_length_pair():
    # cand "the cat sat on the mat" (6 words), ref "the cat is on the mat" (6 words), after tokenisation.
    # unigrams: the x2, cat, on, mat match -> p1 = 5/6; bigrams "the cat", "on the", "the mat" of 5 -> p2 = 3/5.
    # equal lengths -> brevity penalty 1.  BLEU-1 = 5/6,  BLEU-2 = sqrt(5/6 * 3/5) = sqrt(1/2).
    # LCS "the cat on the mat" = 5 -> P = R = 5/6 -> ROUGE-L = 5/6 whatever beta.
    out = compute_caption_metrics(["The cat sat on the mat."], [["the cat is on the mat"]], metrics=NO_JAVA)
    assert out["BLEU-1"] == pytest.approx(5 / 6, abs=1e-6)
    assert out["BLEU-2"] == pytest.approx(math.sqrt(0.5), abs=1e-6)
    assert out["ROUGE-L"] == pytest.approx(5 / 6, abs=1e-9)


def test_bleu_rouge_short_candidate():
    # cand "a cat sat" (3), ref "a cat sat on the mat" (6): p1 = 3/3, p2 = 2/2,
    # brevity penalty exp(1 - 6/3) = e^-1 -> BLEU-1 = BLEU-2 = e^-1 = 0.367879.
    # LCS = 3: P = 3/3 = 1, R = 3/6 = 0.5; ROUGE-L (beta = 1.2) = (1 + 1.44) * 1 * 0.5 / (0.5 + 1.44 * 1)
    #   = 1.22 / 1.94 = 0.628866.
    out = compute_caption_metrics(["A cat sat!"], [["A cat sat on the mat."]], metrics=NO_JAVA)
    assert out["BLEU-1"] == pytest.approx(math.exp(-1), abs=1e-6)
    assert out["BLEU-2"] == pytest.approx(math.exp(-1), abs=1e-6)
    assert out["ROUGE-L"] == pytest.approx(1.22 / 1.94, abs=1e-9)


def test_bleu_is_corpus_level_and_rouge_is_averaged():
    # The two pairs above together. BLEU pools the counts: p1 = (5 + 3) / (6 + 3) = 8/9,
    # p2 = (3 + 2) / (5 + 2) = 5/7, candidate length 9, reference length 12 -> BP = exp(1 - 12/9) = exp(-1/3).
    # BLEU-1 = exp(-1/3) * 8/9 = 0.636918,  BLEU-2 = exp(-1/3) * sqrt(8/9 * 5/7) = 0.570946.
    # ROUGE-L is the mean of the per-pair scores: (5/6 + 1.22/1.94) / 2.
    out = compute_caption_metrics(
        ["the cat sat on the mat", "a cat sat"],
        [["the cat is on the mat"], ["a cat sat on the mat"]],
        metrics=["BLEU", "ROUGE-L"],
    )
    assert out["BLEU-1"] == pytest.approx(math.exp(-1 / 3) * 8 / 9, abs=1e-6)
    assert out["BLEU-2"] == pytest.approx(math.exp(-1 / 3) * math.sqrt(8 / 9 * 5 / 7), abs=1e-6)
    assert out["ROUGE-L"] == pytest.approx((5 / 6 + 1.22 / 1.94) / 2, abs=1e-9)
    assert set(out) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L"}


def test_bleu_rouge_multiple_references():
    # cand "a cat sat", refs "a cat sat on the mat" (6) and "a cat sat down" (4).
    # BLEU uses the closest reference length, 4: BP = exp(1 - 4/3); p1 = p2 = 1 -> BLEU-1 = exp(-1/3).
    # ROUGE-L takes the best precision (3/3) and the best recall (3/4, from the second reference):
    #   (1 + 1.44) * 1 * 0.75 / (0.75 + 1.44) = 1.83 / 2.19 = 0.835616.
    out = compute_caption_metrics(
        ["a cat sat"], [["a cat sat on the mat", "a cat sat down"]], metrics=["BLEU", "ROUGE-L"]
    )
    assert out["BLEU-1"] == pytest.approx(math.exp(-1 / 3), abs=1e-6)
    assert out["ROUGE-L"] == pytest.approx(1.83 / 2.19, abs=1e-9)


# ------------------------------------------------------------------------------------------------------
# CIDEr-D
# ------------------------------------------------------------------------------------------------------

CIDER_PREDICTIONS = ["a dog runs", "the cat sleeps"]
CIDER_REFERENCES = [["a dog runs fast"], ["the cat sleeps"]]
# Two samples, so ref_len = log 2 = L, and every reference n-gram occurs in one sample: idf = L - log 1 = L.
# Sample 1, "a dog runs" vs "a dog runs fast" (all tf = 1, all weights L):
#   n=1: 3 shared unigrams, cos = 3 / (sqrt 3 * sqrt 4) = sqrt(3)/2
#   n=2: 2 shared bigrams of 2 and 3, cos = 2 / (sqrt 2 * sqrt 3) = sqrt(2/3)
#   n=3: 1 shared trigram of 1 and 2, cos = 1 / sqrt 2;   n=4: the candidate has none, 0.
#   The toolkit's "length" counts bigrams: 2 vs 3 -> penalty exp(-1 / (2 * 6^2)) = exp(-1/72).
#   CIDEr = 10 * exp(-1/72) * (sqrt(3)/2 + sqrt(2/3) + 1/sqrt(2) + 0) / 4 = 5.89176...
# Sample 2, identical 3-word captions: cos = 1 for n = 1..3, 0 for n = 4 -> 10 * 3/4 = 7.5.
CIDER_SAMPLE_1 = 10 * math.exp(-1 / 72) * (math.sqrt(3) / 2 + math.sqrt(2 / 3) + 1 / math.sqrt(2)) / 4


def test_cider_hand_computed():
    out = compute_caption_metrics(CIDER_PREDICTIONS, CIDER_REFERENCES, metrics=["CIDEr"])
    assert out["CIDEr"] == pytest.approx((CIDER_SAMPLE_1 + 7.5) / 2, abs=1e-9)


def test_cider_identical_sets():
    # Identical candidates and references with 4+ words and no n-gram shared across samples: cos = 1 for
    # every order -> 10. With one sample the idf is log(1) - log(1) = 0 everywhere, so CIDEr is 0.
    captions = ["a man plays a red guitar", "two dogs chase one ball", "someone slices green onions slowly"]
    out = compute_caption_metrics(captions, [[c] for c in captions], metrics=["CIDEr"])
    assert out["CIDEr"] == pytest.approx(10.0, abs=1e-9)
    assert compute_caption_metrics(captions[:1], [captions[:1]], metrics=["CIDEr"])["CIDEr"] == 0.0


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


# ------------------------------------------------------------------------------------------------------
# METEOR (Java) and tokenisation
# ------------------------------------------------------------------------------------------------------


@requires_java
def test_meteor_identical():
    identical = compute_caption_metrics(["A man is playing a guitar."], [["a man is playing a guitar"]])
    assert identical["METEOR"] == pytest.approx(1.0)
    assert 0.0 < identical["BLEU-4"] <= 1.0 and identical["CIDEr"] == 0.0  # one sample: idf 0


@requires_java
@pytest.mark.slow
def test_meteor_known_value():
    # Not hand-computed: METEOR 1.5 with `-l en -norm` (stems, synonyms, paraphrases, function-word weights)
    # as measured with the toolkit's jar. The corpus value pools the statistics of both samples (the first
    # scores 0, the second 0.39062 alone), so it is not the mean of the per-sample scores.
    out = compute_caption_metrics(
        ["the dog runs", "a man is playing a guitar"],
        [["xyz qqq"], ["a man plays the guitar", "someone is playing music"]],
        metrics=["METEOR"],
    )
    assert out == {"METEOR": pytest.approx(0.2518100, abs=1e-6)}


def test_meteor_without_java_raises(monkeypatch):
    monkeypatch.setattr(valor_metrics.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="java"):
        compute_caption_metrics(["a dog"], [["a dog"]])
    with pytest.raises(RuntimeError, match="java"):
        ptb_tokenize(["a dog"], tokenizer="ptb")
    assert set(compute_caption_metrics(["a dog"], [["a dog"]], metrics=NO_JAVA)) == {
        "BLEU-1",
        "BLEU-2",
        "BLEU-3",
        "BLEU-4",
        "ROUGE-L",
        "CIDEr",
    }


CAPTIONS = [
    "A man is playing a guitar on stage.",
    "Two dogs are running in the park, chasing a ball.",
    "A woman's hand holds a phone; she's talking.",
    "Kids aren't allowed in the pool!",
    "What's the man doing?",
    "A car drives down the road (at night).",
    'People dance to "loud" music...',
    "The boy can't stop laughing -- it's funny.",
    "A cat sits on a red-and-white chair, about 1,000 times.",
    "The U.S. flag waves at 5:30 in 3.5 seconds.",
    "The players' uniforms cost $5, 50% off.",
    "Someone cannot stop: gonna cook food & eat it",
]


def test_python_tokenizer():
    assert ptb_tokenize(CAPTIONS[2:4] + CAPTIONS[5:6]) == [
        "a woman 's hand holds a phone she 's talking",
        "kids are n't allowed in the pool",
        "a car drives down the road -lrb- at night -rrb-",
    ]
    assert ptb_tokenize(["  already   tokenised "], tokenizer="none") == ["already tokenised"]
    with pytest.raises(ValueError, match="Unknown tokenizer"):
        ptb_tokenize(["a"], tokenizer="spacy")


@requires_java
def test_python_tokenizer_matches_java_ptb():
    assert ptb_tokenize(CAPTIONS) == ptb_tokenize(CAPTIONS, tokenizer="ptb")


# ------------------------------------------------------------------------------------------------------
# Input validation
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("predictions", "references", "message"),
    [
        (["a", "b"], [["a"]], r"different lengths \(2 vs 1\)"),
        (["a", "b"], [["a"], []], r"references\[1\] is empty"),
        (["a"], [["a", "  "]], r"references\[0\]\[1\] must be a non-empty string"),
        (["a"], ["a"], r"references\[0\] must be a list"),
        ([], [], "predictions is empty"),
    ],
)
def test_caption_bad_input(predictions, references, message):
    with pytest.raises(ValueError, match=message):
        compute_caption_metrics(predictions, references, metrics=NO_JAVA)


def test_caption_unknown_metric():
    with pytest.raises(ValueError, match="Unknown caption metrics"):
        compute_caption_metrics(["a"], [["a"]], metrics=["SPICE"])


# ------------------------------------------------------------------------------------------------------
# Retrieval
# ------------------------------------------------------------------------------------------------------

# Text x video scores; text i describes video i.
SCORES = np.array(
    [
        [0.9, 0.1, 0.2, 0.3],  # t0: v0 best -> rank 1
        [0.8, 0.5, 0.1, 0.0],  # t1: v0 above v1 -> rank 2
        [0.3, 0.3, 0.3, 0.1],  # t2: v0 and v1 tie with v2, ties count against it -> rank 3
        [0.9, 0.8, 0.7, 0.1],  # t3: last -> rank 4
    ]
)
# Columns (video -> text): v0 [0.9 0.8 0.3 0.9] t3 ties t0 -> 2;  v1 [0.1 0.5 0.3 0.8] -> 2;
# v2 [0.2 0.1 0.3 0.7] -> 2;  v3 [0.3 0.0 0.1 0.1] t0 above, t2 ties t3 -> 3.


def test_retrieval_ranks_by_hand():
    np.testing.assert_array_equal(retrieval_ranks(SCORES), [1, 2, 3, 4])
    np.testing.assert_array_equal(retrieval_ranks(SCORES.T), [2, 2, 2, 3])
    out = compute_retrieval_metrics(SCORES, ks=(1, 2, 3))
    assert out == {"R@1": 25.0, "R@2": 50.0, "R@3": 75.0, "median_rank": 2.5, "mean_rank": 2.5}


def test_text_video_both_directions_and_torch_input():
    out = compute_text_video_retrieval_metrics(torch.tensor(SCORES, dtype=torch.bfloat16))
    assert out["t2v_R@1"] == 25.0 and out["t2v_R@5"] == 100.0 and out["t2v_median_rank"] == 2.5
    assert out["v2t_R@1"] == 0.0 and out["v2t_R@10"] == 100.0
    assert out["v2t_median_rank"] == 2.0 and out["v2t_mean_rank"] == 2.25
    audio = compute_text_video_retrieval_metrics(SCORES, prefixes=("t2a", "a2t"))
    assert audio["t2a_R@1"] == 25.0 and "a2t_mean_rank" in audio


def test_retrieval_ground_truth_mapping_and_several_correct():
    scores = np.array([[0.5, 0.4, 0.1], [0.2, 0.3, 0.9]])
    # q0: correct {1, 2}, best correct 0.4 -> one wrong candidate (0.5) above -> rank 2. q1: candidate 2 -> 1.
    np.testing.assert_array_equal(retrieval_ranks(scores, {0: [1, 2], 1: 2}), [2, 1])
    np.testing.assert_array_equal(retrieval_ranks(scores, [[1, 2], [2]]), [2, 1])
    assert compute_retrieval_metrics(scores, {0: 0, 1: 2})["R@1"] == 100.0


def test_retrieval_bad_input():
    with pytest.raises(ValueError, match="square"):
        compute_retrieval_metrics(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        compute_retrieval_metrics(np.array([[np.nan, 1.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="candidate 5"):
        compute_retrieval_metrics(np.zeros((2, 3)), [0, 5])
    with pytest.raises(ValueError, match="no entry for queries"):
        compute_retrieval_metrics(np.zeros((2, 3)), {0: 1})
    with pytest.raises(ValueError, match="2 entries"):
        compute_retrieval_metrics(np.zeros((3, 3)), [0, 1])
    with pytest.raises(ValueError, match="2-D"):
        compute_retrieval_metrics(np.zeros(3))


# ------------------------------------------------------------------------------------------------------
# evaluate modules, offline
# ------------------------------------------------------------------------------------------------------

_OFFLINE_SCRIPT = """
import json
import evaluate
import huggingface_hub.constants
from transformers_valor.metrics import load_metric

assert evaluate.config.HF_EVALUATE_OFFLINE and huggingface_hub.constants.HF_HUB_OFFLINE
captioning = load_metric("valor_captioning")
retrieval = load_metric("valor_retrieval")
captioning.add_batch(predictions=["the cat sat on the mat"], references=[["the cat is on the mat"]])
captioning.add_batch(predictions=["a cat sat"], references=[["a cat sat on the mat"]])
print(json.dumps({
    "captioning": captioning.compute(metrics=["BLEU", "ROUGE-L", "CIDEr"]),
    "single_reference": captioning.compute(predictions=["a cat sat"], references=["a cat sat on the mat"],
                                           metrics=["BLEU"]),
    "retrieval": retrieval.compute(predictions=%s, references=[[0], [1], [2], [3]], ks=[1, 5]),
    "name": captioning.name,
}))
"""


def test_load_metric_offline(tmp_path):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
    }
    script = _OFFLINE_SCRIPT % SCORES.tolist()
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["captioning"]["BLEU-1"] == pytest.approx(math.exp(-1 / 3) * 8 / 9, abs=1e-6)
    assert out["captioning"]["ROUGE-L"] == pytest.approx((5 / 6 + 1.22 / 1.94) / 2, abs=1e-9)
    assert out["single_reference"]["BLEU-1"] == pytest.approx(math.exp(-1), abs=1e-6)
    assert out["retrieval"] == {"R@1": 25.0, "R@5": 100.0, "median_rank": 2.5, "mean_rank": 2.5}


def test_load_metric_unknown_name():
    with pytest.raises(ValueError, match="Unknown metric"):
        valor_metrics.load_metric("bleu")
