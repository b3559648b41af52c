"""Evaluation metrics for VALOR: text-video retrieval and captioning.

Two ways to use them:

- plain functions, no `evaluate` needed: [`compute_retrieval_metrics`], [`compute_text_video_retrieval_metrics`],
  [`compute_caption_metrics`], and the reusable CIDEr-D scorer [`CiderD`] for self-critical training;
- `evaluate` modules that ship inside this package and load without the Hub:
  `load_metric("valor_captioning")`, `load_metric("valor_retrieval")`.

Captioning scores follow the COCO caption evaluation toolkit. BLEU, ROUGE-L and CIDEr(-D) are computed by the
toolkit's own code as packaged on PyPI (`pycocoevalcap`); METEOR runs the toolkit's METEOR 1.5 jar through the
same package and therefore needs `java` on `PATH`. See `docs/metrics.md`.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import evaluate
    import torch

__all__ = [
    "CAPTION_METRICS",
    "CiderD",
    "compute_caption_metrics",
    "compute_retrieval_metrics",
    "compute_text_video_retrieval_metrics",
    "load_metric",
    "ptb_tokenize",
    "retrieval_ranks",
]

_METRICS_DIR = Path(__file__).resolve().parent
_MODULES = ("valor_captioning", "valor_retrieval")


def load_metric(
    name: Literal["valor_captioning", "valor_retrieval"], **kwargs: Any
) -> evaluate.EvaluationModule:
    """Load one of this package's `evaluate` modules from its file inside the package.

    The module is loaded from a local path, so nothing is fetched from the Hugging Face Hub: it works with
    `HF_HUB_OFFLINE=1` and `HF_EVALUATE_OFFLINE=1`.

    Args:
        name: `"valor_captioning"` (BLEU-1..4, METEOR, ROUGE-L, CIDEr) or `"valor_retrieval"` (R@K, ranks).
        **kwargs: passed to `evaluate.load` (for example `experiment_id` or `keep_in_memory`).

    Returns:
        The loaded `evaluate.EvaluationModule`.

    Example:

    ```python
    >>> from transformers_valor.metrics import load_metric
    >>> bleu_etc = load_metric("valor_captioning")
    >>> bleu_etc.compute(predictions=["a dog runs"], references=[["a dog is running"]], metrics=["BLEU"])
    ```
    """
    if name not in _MODULES:
        raise ValueError(f"Unknown metric {name!r}: expected one of {', '.join(_MODULES)}.")
    import evaluate

    return evaluate.load(str(_METRICS_DIR / name / f"{name}.py"), **kwargs)


# ----------------------------------------------------------------------------------------------------------
# Retrieval
# ----------------------------------------------------------------------------------------------------------

GroundTruth = Mapping[int, "int | Sequence[int]"] | Sequence["int | Sequence[int]"]


def _as_numpy_matrix(scores: torch.Tensor | np.ndarray, name: str = "scores") -> np.ndarray:
    if hasattr(scores, "detach"):  # a torch.Tensor; bfloat16 has no numpy dtype, hence float()
        scores = scores.detach().float().cpu().numpy()
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (queries x candidates) matrix, got shape {scores.shape}.")
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {scores.shape}).")
    if np.isnan(scores).any():
        raise ValueError(f"{name} contains NaN.")
    return scores


def _ground_truth_mask(ground_truth: GroundTruth | None, num_queries: int, num_candidates: int) -> np.ndarray:
    """Boolean (queries, candidates) mask of the correct candidates of every query."""
    if ground_truth is None:
        if num_queries != num_candidates:
            raise ValueError(
                f"Without ground_truth the diagonal is used, which needs a square matrix; got "
                f"{num_queries} queries x {num_candidates} candidates. Pass ground_truth."
            )
        return np.eye(num_queries, dtype=bool)
    if isinstance(ground_truth, Mapping):
        items = list(ground_truth.items())
        missing = sorted(set(range(num_queries)) - {int(q) for q, _ in items})
        if missing:
            raise ValueError(f"ground_truth has no entry for queries {missing[:10]}.")
    else:
        if len(ground_truth) != num_queries:
            raise ValueError(
                f"ground_truth has {len(ground_truth)} entries but scores has {num_queries} queries."
            )
        items = list(enumerate(ground_truth))
    mask = np.zeros((num_queries, num_candidates), dtype=bool)
    for query, targets in items:
        query = int(query)
        if not 0 <= query < num_queries:
            raise ValueError(f"ground_truth names query {query}, outside [0, {num_queries}).")
        targets = [int(targets)] if np.isscalar(targets) else [int(t) for t in targets]
        if not targets:
            raise ValueError(f"ground_truth for query {query} is empty.")
        for target in targets:
            if not 0 <= target < num_candidates:
                raise ValueError(
                    f"ground_truth for query {query} names candidate {target}, outside [0, {num_candidates})."
                )
        mask[query, targets] = True
    return mask


def retrieval_ranks(
    scores: torch.Tensor | np.ndarray, ground_truth: GroundTruth | None = None, chunk_size: int = 1024
) -> np.ndarray:
    """1-based rank of the best-scored correct candidate for every query.

    Ties are broken pessimistically: a wrong candidate whose score equals the best correct score is counted
    as ranked above it, so the rank is `1 + #(wrong candidates with score >= best correct score)`. This is
    independent of the candidate order, and a constant score matrix gives the worst rank rather than R@1 = 100.
    Other correct candidates (when a query has several) never push the rank down.

    Args:
        scores: (queries, candidates) similarity matrix, higher is better (torch or numpy, any float dtype).
        ground_truth: correct candidates per query: a mapping `query -> candidate` or `query -> [candidates]`,
            or a sequence with one entry per query. `None` means the diagonal (query i matches candidate i).
        chunk_size: queries processed at once, to bound memory on large matrices.

    Returns:
        `np.ndarray` of int64 ranks, shape (queries,).
    """
    scores = _as_numpy_matrix(scores)
    mask = _ground_truth_mask(ground_truth, *scores.shape)
    ranks = np.empty(scores.shape[0], dtype=np.int64)
    for start in range(0, scores.shape[0], chunk_size):
        block = scores[start : start + chunk_size]  # (q, C)
        correct = mask[start : start + chunk_size]  # (q, C)
        best = np.where(correct, block, -np.inf).max(axis=1, keepdims=True)  # (q, 1)
        ranks[start : start + chunk_size] = 1 + ((block >= best) & ~correct).sum(axis=1)
    return ranks


def compute_retrieval_metrics(
    scores: torch.Tensor | np.ndarray,
    ground_truth: GroundTruth | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Recall at K, median and mean rank for one retrieval direction.

    Args:
        scores: (queries, candidates) similarity matrix, higher is better.
        ground_truth: correct candidates per query (see [`retrieval_ranks`]); `None` means the diagonal.
        ks: the cut-offs K of the recall values.

    Returns:
        `{"R@1": ..., "R@5": ..., "R@10": ..., "median_rank": ..., "mean_rank": ...}`. Recalls are percentages
        (0-100) of queries whose correct candidate ranks within the top K, as VALOR reports them; ranks are
        1-based (a perfect retrieval has median rank 1). Ties count against the query (see
        [`retrieval_ranks`]).
    """
    ranks = retrieval_ranks(scores, ground_truth)
    out = {f"R@{k}": float(100.0 * np.mean(ranks <= k)) for k in ks}
    out["median_rank"] = float(np.median(ranks))
    out["mean_rank"] = float(np.mean(ranks))
    return out


def compute_text_video_retrieval_metrics(
    text_video_scores: torch.Tensor | np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    prefixes: tuple[str, str] = ("t2v", "v2t"),
) -> dict[str, float]:
    """Both retrieval directions of a square text x video matrix whose diagonal holds the matching pairs.

    Args:
        text_video_scores: (N texts, N videos) similarity matrix; text i describes video i.
        ks: the cut-offs K of the recall values.
        prefixes: names of the two directions (rows as queries, then columns as queries); use
            `("t2a", "a2t")` or `("t2va", "va2t")` for audio or audio-visual retrieval.

    Returns:
        The keys of [`compute_retrieval_metrics`] prefixed per direction, e.g. `t2v_R@1`, `v2t_median_rank`.
    """
    scores = _as_numpy_matrix(text_video_scores, "text_video_scores")
    if scores.shape[0] != scores.shape[1]:
        raise ValueError(f"text_video_scores must be square, got shape {scores.shape}.")
    out = {}
    for prefix, matrix in zip(prefixes, (scores, scores.T)):
        out.update({f"{prefix}_{k}": v for k, v in compute_retrieval_metrics(matrix, None, ks).items()})
    return out


# ----------------------------------------------------------------------------------------------------------
# Tokenisation (the COCO toolkit's PTB tokenisation + punctuation removal)
# ----------------------------------------------------------------------------------------------------------

# Tokens the toolkit deletes after tokenising, plus a plain double quote (PTB turns it into `` or '').
# The toolkit's list also names "-LRB-", "-RRB-", "-LCB-", "-RCB-" in upper case, but the tokenizer runs with
# lower-casing, so bracket tokens come out as "-lrb-" etc. and are kept.
_REMOVED_TOKENS = frozenset({'"', "''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"})
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_ABBREVIATIONS = frozenset({"mr.", "mrs.", "ms.", "dr.", "st.", "jr.", "sr.", "vs.", "etc.", "prof.", "inc."})
_CLITICS = ("'s", "'re", "'ve", "'ll", "'d", "'m")
_SPLIT_WORDS = {
    "cannot": ["can", "not"],
    "gonna": ["gon", "na"],
    "wanna": ["wan", "na"],
    "gotta": ["got", "ta"],
    "gimme": ["gim", "me"],
    "lemme": ["lem", "me"],
}
_CHAR_MAP = str.maketrans(
    {
        "\u201c": ' " ',
        "\u201d": ' " ',
        "\u2018": "'",
        "\u2019": "'",
        "\u2014": " -- ",
        "\u2013": " -- ",
        "\u2026": " ... ",
        **{k: f" {v} " for k, v in _BRACKETS.items()},
    }
)
_SPACE_AROUND = [
    (re.compile(r'"'), ' " '),
    (re.compile(r"--+"), " -- "),
    (re.compile(r";"), " ; "),
    (re.compile(r"[$#%]"), r" \g<0> "),
    (re.compile(r"\.\.\.+"), " ... "),
    (re.compile(r"[?!]+"), r" \g<0> "),
    (re.compile(r",(?!\d)|(?<!\d),"), " , "),  # "1,000" stays one token
    (re.compile(r":(?!\d)|(?<!\d):"), " : "),  # "5:30" stays one token
]


def _split_word(word: str) -> list[str]:
    """Tokens of one whitespace-free chunk, following the PTB tokenizer's rules for caption text."""
    head: list[str] = []
    tail: list[str] = []
    while len(word) > 1 and word[0] in "'`" and word not in _CLITICS:
        head.append(word[0])
        word = word[1:]
    while len(word) > 1 and word[-1] in "'`":
        tail.insert(0, word[-1])
        word = word[:-1]
    if len(word) > 1 and word.endswith(".") and word != "...":
        # "u.s.", "e.g.", an initial ("a.") and a few titles keep their period; elsewhere it is split off.
        if not (re.fullmatch(r"(?:[a-z]\.)+", word) or word in _ABBREVIATIONS):
            tail.insert(0, ".")
            word = word[:-1]
    if word in _SPLIT_WORDS:
        return head + _SPLIT_WORDS[word] + tail
    if len(word) > 3 and word.endswith("n't"):
        return head + [word[:-3], "n't"] + tail
    for clitic in _CLITICS:
        if len(word) > len(clitic) and word.endswith(clitic):
            return head + [word[: -len(clitic)], clitic] + tail
    return head + [word] + tail


def _python_ptb_tokenize(sentence: str) -> str:
    text = sentence.replace("\n", " ").lower().translate(_CHAR_MAP)
    for pattern, replacement in _SPACE_AROUND:
        text = pattern.sub(replacement, text)
    tokens = [t for chunk in text.split() for t in _split_word(chunk)]
    return " ".join(t for t in tokens if t not in _REMOVED_TOKENS)


def _require_java(what: str) -> str:
    java = shutil.which("java")
    if java is None:
        raise RuntimeError(
            f"{what} needs Java: no `java` executable was found on PATH. Install a Java runtime (for example "
            "Debian's openjdk-17-jre-headless), or leave METEOR out (metrics=[...]) and use tokenizer='python'."
        )
    return java


def _pycocoevalcap_dir() -> Path:
    try:
        from pycocoevalcap.bleu import bleu  # noqa: F401  (pycocoevalcap has no top-level __init__)
    except ImportError as error:
        raise ImportError(
            "Captioning metrics need `pycocoevalcap` (pip install 'pycocoevalcap>=1.2,<1.3')."
        ) from error
    return Path(bleu.__file__).resolve().parent.parent


def _java_ptb_tokenize(sentences: list[str]) -> list[str]:
    """The toolkit's Stanford PTBTokenizer run, but with its temporary file outside site-packages."""
    java = _require_java("tokenizer='ptb'")
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, STANFORD_CORENLP_3_4_1_JAR

    jar = _pycocoevalcap_dir() / "tokenizer" / STANFORD_CORENLP_3_4_1_JAR
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sentences.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(s.replace("\n", " ") for s in sentences))
        cmd = [java, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
        result = subprocess.run([*cmd, path], capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"The Stanford PTBTokenizer failed: {result.stderr.decode(errors='replace')[-2000:]}"
        )
    lines = result.stdout.decode("utf-8").split("\n")[: len(sentences)]
    lines += [""] * (len(sentences) - len(lines))
    removed = set(PUNCTUATIONS)
    return [" ".join(w for w in line.rstrip().split(" ") if w and w not in removed) for line in lines]


def ptb_tokenize(
    sentences: Sequence[str], tokenizer: Literal["python", "ptb", "none"] = "python"
) -> list[str]:
    """Tokenise captions as the COCO caption toolkit does before scoring.

    The toolkit runs the Stanford PTBTokenizer (CoreNLP 3.4.1, lower-casing, one sentence per line) and then
    deletes punctuation tokens. Tokens are returned joined by single spaces.

    Args:
        sentences: the captions.
        tokenizer: `"python"` (default): a pure-Python re-implementation of the PTB rules that matter for
            captions (lower-casing, clitics such as "dog 's" and "do n't", punctuation split and removed,
            brackets as "-lrb-"); it agrees with the Java tokenizer on ordinary caption text (see
            `docs/metrics.md` for the known differences). `"ptb"`: the toolkit's Java tokenizer (needs `java`).
            `"none"`: only collapse whitespace (for text that is already tokenised).

    Returns:
        One tokenised string per sentence.
    """
    if tokenizer == "python":
        return [_python_ptb_tokenize(s) for s in sentences]
    if tokenizer == "ptb":
        return _java_ptb_tokenize(list(sentences))
    if tokenizer == "none":
        return [" ".join(s.split()) for s in sentences]
    raise ValueError(f"Unknown tokenizer {tokenizer!r}: expected 'python', 'ptb' or 'none'.")


# ----------------------------------------------------------------------------------------------------------
# Captioning
# ----------------------------------------------------------------------------------------------------------

CAPTION_METRICS = ("BLEU", "METEOR", "ROUGE-L", "CIDEr")
CaptionMetric = Literal["BLEU", "METEOR", "ROUGE-L", "CIDEr"]


def _validate_captions(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if isinstance(predictions, str) or isinstance(references, str):
        raise ValueError("predictions must be a list of strings and references a list of lists of strings.")
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references have different lengths ({len(predictions)} vs {len(references)})."
        )
    if len(predictions) == 0:
        raise ValueError("predictions is empty: nothing to score.")
    for i, prediction in enumerate(predictions):
        if not isinstance(prediction, str):
            raise ValueError(f"predictions[{i}] must be a string, got {type(prediction).__name__}.")
    for i, refs in enumerate(references):
        if isinstance(refs, str):
            raise ValueError(f"references[{i}] must be a list of strings, got a single string.")
        if len(refs) == 0:
            raise ValueError(f"references[{i}] is empty: every prediction needs at least one reference.")
        for j, ref in enumerate(refs):
            if not isinstance(ref, str) or not ref.strip():
                raise ValueError(f"references[{i}][{j}] must be a non-empty string, got {ref!r}.")


def _meteor(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
    _require_java("METEOR")
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()  # starts `java -jar meteor-1.5.jar -stdio` and loads its paraphrase table
    process = scorer.meteor_p
    try:
        score, _ = scorer.compute_score(gts, res)
    except ValueError as error:  # an empty line where a number was expected: the JVM died
        raise RuntimeError(
            f"METEOR (java) failed: {process.stderr.read().decode(errors='replace')[-2000:]}"
        ) from error
    finally:
        process.stdin.close()
        process.kill()
        process.wait()
    return float(score)


def compute_caption_metrics(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    metrics: Sequence[CaptionMetric] | None = None,
    tokenizer: Literal["python", "ptb", "none"] = "python",
) -> dict[str, float]:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr-D of generated captions, as the COCO caption toolkit computes them.

    Captions are tokenised ([`ptb_tokenize`]) and scored with the toolkit's scorers from `pycocoevalcap`:
    corpus-level BLEU with the "closest" reference length, ROUGE-L (beta 1.2) averaged over samples, CIDEr-D
    (n-grams 1-4, Gaussian length penalty sigma 6, clipped counts, x10, document frequencies from the
    references of the evaluated set) averaged over samples, and METEOR 1.5 (`-l en -norm`) via Java.

    Args:
        predictions: one generated caption per sample.
        references: for every sample, its list of reference captions (at least one, non-empty).
        metrics: which of `"BLEU"` (gives BLEU-1..4), `"METEOR"`, `"ROUGE-L"`, `"CIDEr"` to compute; all when
            `None`.
        tokenizer: see [`ptb_tokenize`].

    Returns:
        A dict with keys among `BLEU-1`, `BLEU-2`, `BLEU-3`, `BLEU-4`, `METEOR`, `ROUGE-L`, `CIDEr`, on the
        toolkit's scale (fractions; VALOR's tables multiply by 100).

    Raises:
        ValueError: mismatched lengths, no samples, a sample without references, an empty reference, or an
            unknown metric name.
        RuntimeError: METEOR (or `tokenizer="ptb"`) was asked for and `java` is not on PATH.
    """
    _validate_captions(predictions, references)
    wanted = list(CAPTION_METRICS if metrics is None else metrics)
    unknown = [m for m in wanted if m not in CAPTION_METRICS]
    if unknown:
        raise ValueError(f"Unknown caption metrics {unknown}: expected some of {list(CAPTION_METRICS)}.")
    if "METEOR" in wanted:
        _require_java("METEOR")  # fail before the slower scorers run
    _pycocoevalcap_dir()

    counts = [len(refs) for refs in references]
    tokens = ptb_tokenize([*predictions, *(r for refs in references for r in refs)], tokenizer)
    res = {i: [tokens[i]] for i in range(len(predictions))}
    gts, offset = {}, len(predictions)
    for i, count in enumerate(counts):
        gts[i] = tokens[offset : offset + count]
        offset += count

    out: dict[str, float] = {}
    if "BLEU" in wanted:
        from pycocoevalcap.bleu.bleu import Bleu

        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        out.update({f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)})
    if "METEOR" in wanted:
        out["METEOR"] = _meteor(gts, res)
    if "ROUGE-L" in wanted:
        from pycocoevalcap.rouge.rouge import Rouge

        out["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    if "CIDEr" in wanted:
        from pycocoevalcap.cider.cider import Cider

        # The toolkit's scorer fails on references without any n-gram (all punctuation); score 0 there.
        has_ngrams = any(ref for refs in gts.values() for ref in refs)
        out["CIDEr"] = float(Cider().compute_score(gts, res)[0]) if has_ngrams else 0.0
    return out


# ----------------------------------------------------------------------------------------------------------
# CIDEr-D for self-critical sequence training
# ----------------------------------------------------------------------------------------------------------


class _Sentence:
    """n-gram ids, counts and orders of one tokenised sentence, plus the toolkit's length (bigram count)."""

    __slots__ = ("ids", "counts", "orders", "length")

    def __init__(self, ids: np.ndarray, counts: np.ndarray, orders: np.ndarray, length: int):
        self.ids, self.counts, self.orders, self.length = ids, counts, orders, length


class CiderD:
    """CIDEr-D scorer with document frequencies fixed once from a reference corpus, for SCST rewards.

    The score of a candidate is the toolkit's CIDEr-D: for n = 1..4, the cosine similarity between tf-idf
    vectors of the candidate's and each reference's n-grams, with the candidate's tf-idf clipped at the
    reference's and a Gaussian length penalty `exp(-(l_c - l_r)^2 / (2 sigma^2))`, averaged over n and over
    the references, times 10. Here the document frequency of an n-gram is the number of reference *sets* in
    `refs_corpus` that contain it and the log of `len(refs_corpus)` is the reference idf, computed once (the
    toolkit recomputes them from the evaluated set; pass that set's references as `refs_corpus` to get its
    per-sample scores exactly). Reference vectors of the corpus are cached, and the similarities of all
    candidate-reference pairs of a call are computed with array operations.

    Args:
        refs_corpus: the training references, one list of captions per video.
        n: the largest n-gram order.
        sigma: the standard deviation of the length penalty.
        tokenizer: how captions are tokenised before counting (see [`ptb_tokenize`]); `"none"` is fastest when
            candidates and references are already lower-cased and tokenised.

    Example:

    ```python
    >>> scorer = CiderD(train_references)  # once
    >>> rewards = scorer.score(sampled_captions, batch_references) - scorer.score(greedy_captions, batch_references)
    ```
    """

    def __init__(
        self,
        refs_corpus: Sequence[Sequence[str]],
        n: int = 4,
        sigma: float = 6.0,
        tokenizer: Literal["python", "ptb", "none"] = "python",
    ):
        if len(refs_corpus) == 0:
            raise ValueError(
                "refs_corpus is empty: CIDEr-D needs reference captions for its document frequencies."
            )
        for i, refs in enumerate(refs_corpus):
            if isinstance(refs, str) or len(refs) == 0:
                raise ValueError(f"refs_corpus[{i}] must be a non-empty list of captions.")
        self.n = n
        self.sigma = sigma
        self.tokenizer = tokenizer
        self._vocab: dict[tuple[str, ...], int] = {}
        doc_freq: Counter[int] = Counter()
        flat = ptb_tokenize([r for refs in refs_corpus for r in refs], tokenizer)
        counts = [len(refs) for refs in refs_corpus]
        offset = 0
        for count in counts:
            ngram_ids = set()
            for sentence in flat[offset : offset + count]:
                for ngram in self._ngrams(sentence.split()):
                    ngram_ids.add(self._vocab.setdefault(ngram, len(self._vocab)))
            doc_freq.update(ngram_ids)
            offset += count
        df = np.zeros(len(self._vocab), dtype=np.float64)
        df[list(doc_freq)] = list(doc_freq.values())
        self.ref_len = math.log(float(len(refs_corpus)))
        self._idf = self.ref_len - np.log(np.maximum(df, 1.0))  # (V,)
        # Raw caption -> encoded tokens; corpus captions need no tokenisation during training.
        self._ref_cache: dict[str, _Sentence] = {}
        raw = [r for refs in refs_corpus for r in refs]
        for caption, sentence in zip(raw, flat):
            if caption not in self._ref_cache:
                self._ref_cache[caption] = self._encode(sentence.split(), {})

    def _ngrams(self, words: list[str]) -> list[tuple[str, ...]]:
        return [tuple(words[i : i + k]) for k in range(1, self.n + 1) for i in range(len(words) - k + 1)]

    def _encode(self, words: list[str], unseen: dict[tuple[str, ...], int]) -> _Sentence:
        counts = Counter(self._ngrams(words))
        ids = np.empty(len(counts), dtype=np.int64)
        for j, ngram in enumerate(counts):
            index = self._vocab.get(ngram)
            if index is None:  # not in the corpus: df 0, an id private to this call
                index = unseen.setdefault(ngram, len(self._vocab) + len(unseen))
            ids[j] = index
        orders = np.fromiter((len(g) - 1 for g in counts), dtype=np.int64, count=len(counts))
        tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        return _Sentence(ids, tf, orders, max(len(words) - 1, 0))

    def _weights(self, sentence: _Sentence) -> np.ndarray:
        known = sentence.ids < len(self._idf)
        idf = np.full(len(sentence.ids), self.ref_len)  # unseen n-grams have df 0: log(max(1, 0)) = 0
        idf[known] = self._idf[sentence.ids[known]]
        return sentence.counts * idf

    def score(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
        """Per-sample CIDEr-D of `candidates[i]` against `references[i]`.

        Args:
            candidates: the captions to score (for SCST: sampled and greedy captions).
            references: for every candidate, its list of reference captions (corpus captions are cached,
                others are tokenised on the fly).

        Returns:
            `np.ndarray` of float64, shape (len(candidates),).
        """
        _validate_captions(candidates, references)
        n = self.n
        unseen: dict[tuple[str, ...], int] = {}
        cand = [self._encode(s.split(), unseen) for s in ptb_tokenize(candidates, self.tokenizer)]
        ref_owner, refs = [], []
        for i, ref_list in enumerate(references):
            for ref in ref_list:
                encoded = self._ref_cache.get(ref)
                if encoded is None:
                    encoded = self._encode(ptb_tokenize([ref], self.tokenizer)[0].split(), unseen)
                refs.append(encoded)
                ref_owner.append(i)
        ref_owner = np.asarray(ref_owner, dtype=np.int64)  # (P,) candidate of every candidate-reference pair
        num_pairs, vocab_size = len(refs), len(self._vocab) + len(unseen) + 1

        cand_w = [self._weights(c) for c in cand]
        ref_w = [self._weights(r) for r in refs]
        cand_norm = np.zeros((len(cand), n))
        for i, (c, w) in enumerate(zip(cand, cand_w)):
            cand_norm[i] = np.sqrt(np.bincount(c.orders, weights=w**2, minlength=n))
        ref_norm = np.zeros((num_pairs, n))
        for p, (r, w) in enumerate(zip(refs, ref_w)):
            ref_norm[p] = np.sqrt(np.bincount(r.orders, weights=w**2, minlength=n))

        # Join candidate and reference n-grams of every pair on key = pair * V + ngram id.
        cand_pair_keys, cand_vals, cand_orders, ref_keys, ref_vals = [], [], [], [], []
        for p, owner in enumerate(ref_owner):
            c = cand[owner]
            cand_pair_keys.append(p * vocab_size + c.ids)
            cand_vals.append(cand_w[owner])
            cand_orders.append(c.orders)
            ref_keys.append(p * vocab_size + refs[p].ids)
            ref_vals.append(ref_w[p])
        ck, rk = np.concatenate(cand_pair_keys), np.concatenate(ref_keys)
        _, ci, ri = np.intersect1d(ck, rk, assume_unique=True, return_indices=True)
        vc, vr = np.concatenate(cand_vals)[ci], np.concatenate(ref_vals)[ri]
        pair = ck[ci] // vocab_size
        order = np.concatenate(cand_orders)[ci]
        dots = np.bincount(pair * n + order, weights=np.minimum(vc, vr) * vr, minlength=num_pairs * n)
        # float even when no n-gram is shared (numpy's bincount of nothing is int64).
        dots = dots.astype(np.float64).reshape(num_pairs, n)  # (P, n)

        denom = cand_norm[ref_owner] * ref_norm  # (P, n)
        sims = np.divide(dots, denom, out=dots.copy(), where=denom != 0)
        lengths_c = np.array([c.length for c in cand], dtype=np.float64)[ref_owner]
        lengths_r = np.array([r.length for r in refs], dtype=np.float64)
        penalty = np.exp(-((lengths_c - lengths_r) ** 2) / (2 * self.sigma**2))  # (P,)
        per_pair = sims.mean(axis=1) * penalty  # (P,)
        num_refs = np.bincount(ref_owner, minlength=len(cand))
        return 10.0 * np.bincount(ref_owner, weights=per_pair, minlength=len(cand)) / num_refs
