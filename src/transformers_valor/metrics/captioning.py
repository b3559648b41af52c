"""Captioning metrics for VALOR as the COCO caption evaluation toolkit computes them.

Captions are PTB-tokenised ([`ptb_tokenize`]: a pure-Python version of the toolkit's rules, or the toolkit's
Java tokenizer) and scored by [`compute_caption_metrics`]. BLEU, ROUGE-L and CIDEr(-D) are computed by the
toolkit's own code as packaged on PyPI (`pycocoevalcap`); METEOR runs the toolkit's METEOR 1.5 jar through the
same package and therefore needs `java` on `PATH`. The `valor_captioning` `evaluate` module wraps
[`compute_caption_metrics`]. See `docs/metrics.md`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

__all__ = ["CAPTION_METRICS", "CaptionMetric", "compute_caption_metrics", "ptb_tokenize"]

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
    """One caption tokenised by the pure-Python PTB rules, punctuation tokens removed."""
    text = sentence.replace("\n", " ").lower().translate(_CHAR_MAP)
    for pattern, replacement in _SPACE_AROUND:
        text = pattern.sub(replacement, text)
    tokens = [t for chunk in text.split() for t in _split_word(chunk)]
    return " ".join(t for t in tokens if t not in _REMOVED_TOKENS)


def _require_java(what: str) -> str:
    """The path of the `java` executable; a RuntimeError naming `what` when there is none on PATH."""
    java = shutil.which("java")
    if java is None:
        raise RuntimeError(
            f"{what} needs Java: no `java` executable was found on PATH. Install a Java runtime (for example "
            "Debian's openjdk-17-jre-headless), or leave METEOR out (metrics=[...]) and use tokenizer='python'."
        )
    return java


def _pycocoevalcap_dir() -> Path:
    """The installed `pycocoevalcap` folder; an ImportError that says how to install it when it is missing."""
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
# Scoring
# ----------------------------------------------------------------------------------------------------------

CAPTION_METRICS = ("BLEU", "METEOR", "ROUGE-L", "CIDEr")
CaptionMetric = Literal["BLEU", "METEOR", "ROUGE-L", "CIDEr"]


def _validate_captions(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    """Raise a ValueError unless there is one string per sample and a non-empty list of references each."""
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


def _wanted_metrics(metrics: Sequence[CaptionMetric] | None) -> list[str]:
    """The metric names asked for (all when `None`); a ValueError for unknown names."""
    wanted = list(CAPTION_METRICS if metrics is None else metrics)
    unknown = [m for m in wanted if m not in CAPTION_METRICS]
    if unknown:
        raise ValueError(f"Unknown caption metrics {unknown}: expected some of {list(CAPTION_METRICS)}.")
    return wanted


def _tokenized_samples(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    tokenizer: Literal["python", "ptb", "none"],
) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """The toolkit's `(gts, res)` dicts of tokenised references and predictions, keyed by sample index.

    All captions are tokenised in one call, so `tokenizer="ptb"` starts a single JVM.
    """
    counts = [len(refs) for refs in references]
    tokens = ptb_tokenize([*predictions, *(r for refs in references for r in refs)], tokenizer)
    res = {i: [tokens[i]] for i in range(len(predictions))}
    gts, offset = {}, len(predictions)
    for i, count in enumerate(counts):
        gts[i] = tokens[offset : offset + count]
        offset += count
    return gts, res


def _bleu(gts: dict[int, list[str]], res: dict[int, list[str]]) -> dict[str, float]:
    """Corpus-level BLEU-1..4 by the toolkit's scorer."""
    from pycocoevalcap.bleu.bleu import Bleu

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)}


def _meteor(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
    """Corpus-level METEOR 1.5 by the toolkit's jar; the JVM is stopped before returning."""
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


def _rouge_l(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
    """ROUGE-L (beta 1.2) by the toolkit's scorer, averaged over samples."""
    from pycocoevalcap.rouge.rouge import Rouge

    return float(Rouge().compute_score(gts, res)[0])


def _cider(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
    """CIDEr-D by the toolkit's scorer, averaged over samples; 0 when no reference has any n-gram."""
    from pycocoevalcap.cider.cider import Cider

    # The toolkit's scorer fails on references without any n-gram (all punctuation); score 0 there.
    has_ngrams = any(ref for refs in gts.values() for ref in refs)
    return float(Cider().compute_score(gts, res)[0]) if has_ngrams else 0.0


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
    wanted = _wanted_metrics(metrics)
    if "METEOR" in wanted:
        _require_java("METEOR")  # fail before the slower scorers run
    _pycocoevalcap_dir()
    gts, res = _tokenized_samples(predictions, references, tokenizer)

    out: dict[str, float] = {}
    if "BLEU" in wanted:
        out.update(_bleu(gts, res))
    if "METEOR" in wanted:
        out["METEOR"] = _meteor(gts, res)
    if "ROUGE-L" in wanted:
        out["ROUGE-L"] = _rouge_l(gts, res)
    if "CIDEr" in wanted:
        out["CIDEr"] = _cider(gts, res)
    return out
