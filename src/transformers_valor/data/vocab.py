"""Build a small BERT WordPiece vocabulary from a caption corpus, deterministically.

VALOR uses BERT-base-uncased's vocabulary; a model trained from scratch on a narrow corpus (such as the synthetic
demo corpus) is much cheaper with a vocabulary of its own words. The result is a regular `BertTokenizer`
(`[PAD]`=0, `[UNK]`, `[CLS]`, `[SEP]`, `[MASK]` first), so `ValorProcessor` uses it unchanged.

The `tokenizers` WordPiece trainer is not used: it breaks ties between equally frequent merges in hash-map order,
which changes from one process to the next, so the same captions gave a different vocabulary (and a different
model and loss curve) in every run. This builder keeps every character of the corpus, alone and as a `##`
continuation, so any word still tokenizes, and fills the rest of the budget with whole words, most frequent
first, ties in alphabetical order.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tokenizers import normalizers, pre_tokenizers
from transformers import BertTokenizer

from ..tokenization_valor import clean_caption

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def count_words(texts: Iterable[str]) -> Counter:
    """Occurrences of each word of `texts`, cleaned like VALOR's captions and split as `BertTokenizer` splits
    (lower-cased, accents stripped, punctuation apart)."""
    normalizer = normalizers.BertNormalizer(clean_text=True, strip_accents=True, lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    counts = Counter()
    for text in texts:
        counts.update(
            word for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(clean_caption(text)))
        )
    return counts


def wordpiece_vocabulary(counts: Counter, vocab_size: int, min_frequency: int = 1) -> list[str]:
    """The entries of a vocabulary of at most `vocab_size`: the special tokens, every character alone and as a
    `##` continuation, then the words seen at least `min_frequency` times, most frequent first."""
    characters = sorted({character for word in counts for character in word})
    vocabulary = [*SPECIAL_TOKENS, *characters, *(f"##{c}" for c in characters)]
    if vocab_size < len(vocabulary):
        raise ValueError(
            f"vocab_size={vocab_size} cannot hold the {len(SPECIAL_TOKENS)} special tokens and the corpus's "
            f"{len(characters)} characters (alone and as '##' continuations): {len(vocabulary)} entries at least"
        )
    words = sorted(
        (w for w, n in counts.items() if n >= min_frequency and len(w) > 1), key=lambda w: (-counts[w], w)
    )
    return vocabulary + words[: vocab_size - len(vocabulary)]


def train_wordpiece_tokenizer(
    texts: Iterable[str],
    output_dir: str | os.PathLike,
    vocab_size: int = 1000,
    min_frequency: int = 1,
) -> BertTokenizer:
    """
    Build a lower-cased WordPiece vocabulary from `texts` (cleaned like VALOR's captions), write it to
    `output_dir/vocab.txt` and return the `BertTokenizer` that reads it. The same texts give the same file.

    Args:
        texts: the training captions.
        output_dir: receives `vocab.txt`.
        vocab_size (`int`, defaults to 1000): upper bound; a small corpus gives fewer entries.
        min_frequency (`int`, defaults to 1): minimum count of a whole word.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    vocabulary = wordpiece_vocabulary(count_words(texts), vocab_size, min_frequency)
    partial = output_dir / ".vocab.txt.partial"
    partial.write_text("".join(f"{entry}\n" for entry in vocabulary), encoding="utf-8")
    os.replace(partial, output_dir / "vocab.txt")
    return BertTokenizer(vocab=str(output_dir / "vocab.txt"), do_lower_case=True)
