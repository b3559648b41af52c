"""Text preparation for VALOR: the caption cleaning applied before BERT WordPiece tokenisation.

VALOR tokenises with the plain BERT-base-uncased WordPiece vocabulary (`BertTokenizerFast`, loadable with
`AutoTokenizer`); the only VALOR-specific step is `clean_caption`, which `ValorProcessor` applies to every text.
"""

from __future__ import annotations

import string

_DELETE_PUNCTUATION = str.maketrans("", "", string.punctuation)


def clean_caption(text: str) -> str:
    """VALOR's text cleaning: lower-case, delete ASCII punctuation (`string.punctuation`), collapse whitespace.

    Deleting (not replacing) punctuation joins its neighbours, as the reference does: `"don't"` -> `"dont"`,
    `"a-b"` -> `"ab"`.

    >>> clean_caption("  A Man, playing  the GUITAR! ")
    'a man playing the guitar'
    """
    if not isinstance(text, str):
        raise TypeError(f"Expected a string, got {type(text).__name__}.")
    return " ".join(text.lower().translate(_DELETE_PUNCTUATION).split())
