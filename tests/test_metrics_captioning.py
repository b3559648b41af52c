"""Tests of transformers_valor.metrics.captioning: BLEU, ROUGE-L, CIDEr and METEOR against hand-computed values,
the PTB tokenisation, and input validation."""

import math
import shutil

import pytest

from transformers_valor.metrics import captioning as captioning_metrics
from transformers_valor.metrics import compute_caption_metrics, ptb_tokenize

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
# CIDEr (the toolkit's scorer); the same hand-computed case checks CiderD in test_metrics_cider_d.py
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
    monkeypatch.setattr(captioning_metrics.shutil, "which", lambda name: None)
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
