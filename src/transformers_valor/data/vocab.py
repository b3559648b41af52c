"""Train a small BERT WordPiece vocabulary on a caption corpus with the `tokenizers` library.

VALOR uses BERT-base-uncased's vocabulary; a model trained from scratch on a narrow corpus (such as the synthetic
demo corpus) is much cheaper with a vocabulary of its own words. The result is a regular `BertTokenizer`
(`[PAD]`=0, `[UNK]`, `[CLS]`, `[SEP]`, `[MASK]` first), so `ValorProcessor` uses it unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import BertWordPieceTokenizer
from transformers import BertTokenizer

from ..tokenization_valor import clean_caption

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def train_wordpiece_tokenizer(
    texts: Iterable[str],
    output_dir: str | os.PathLike,
    vocab_size: int = 1000,
    min_frequency: int = 1,
) -> BertTokenizer:
    """
    Train a lower-cased WordPiece vocabulary on `texts` (cleaned like VALOR's captions) and return a
    `BertTokenizer` built from the `vocab.txt` written to `output_dir`.

    Args:
        texts: the training captions.
        output_dir: receives `vocab.txt`.
        vocab_size (`int`, defaults to 1000): upper bound; a small corpus gives fewer entries.
        min_frequency (`int`, defaults to 1): minimum count of a merged piece.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer = BertWordPieceTokenizer(lowercase=True, strip_accents=True, clean_text=True)
    trainer.train_from_iterator(
        (clean_caption(t) for t in texts),
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        limit_alphabet=200,
        show_progress=False,
    )
    trainer.save_model(str(output_dir))
    return BertTokenizer(vocab=str(output_dir / "vocab.txt"), do_lower_case=True)
