"""The caption vocabulary builder (`transformers_valor.data.vocab`): one fixed vocabulary per corpus, every word
tokenizable, the budget and the frequency floor honoured."""

import pytest

from transformers_valor import clean_caption
from transformers_valor.data.vocab import (
    SPECIAL_TOKENS,
    count_words,
    train_wordpiece_tokenizer,
    wordpiece_vocabulary,
)

CAPTIONS = ["A red circle moves LEFT.", "A red square moves right!", "a blue circle"]


def test_vocabulary_is_fixed_by_the_captions(tmp_path):
    """The `tokenizers` trainer broke frequency ties in hash-map order, a different vocabulary in every process;
    the entries here are fully determined: specials, characters, `##` characters, words by count then name."""
    train_wordpiece_tokenizer(CAPTIONS, tmp_path, vocab_size=100)
    characters = sorted(set("aredcirclemovesleftsquarerightblue"))
    words = ["a", "circle", "moves", "red", "blue", "left", "right", "square"]
    expected = [
        *SPECIAL_TOKENS,
        *characters,
        *(f"##{c}" for c in characters),
        *(w for w in words if len(w) > 1),
    ]
    assert (tmp_path / "vocab.txt").read_text().splitlines() == expected
    assert not list(tmp_path.glob(".*partial"))


def test_tokenizer_reads_the_vocabulary_like_bert(tmp_path):
    tokenizer = train_wordpiece_tokenizer(CAPTIONS, tmp_path, vocab_size=100)
    assert tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [0, 1, 2, 3, 4]
    assert tokenizer.tokenize(clean_caption("A Red circle.")) == ["a", "red", "circle"]  # as ValorProcessor
    assert tokenizer.tokenize("a red squirrel") == [
        "a",
        "red",
        "s",
        "##q",
        "##u",
        "##i",
        "##r",
        "##r",
        "##e",
        "##l",
    ]
    assert tokenizer.decode(tokenizer("a blue square moves")["input_ids"], skip_special_tokens=True) == (
        "a blue square moves"
    )


def test_budget_keeps_the_most_frequent_words_and_the_frequency_floor():
    counts = count_words(CAPTIONS)
    assert counts["circle"] == 2 and counts["left"] == 1 and "LEFT" not in counts
    base = len(SPECIAL_TOKENS) + 2 * len(set("".join(counts)))
    assert wordpiece_vocabulary(counts, base + 2)[base:] == ["circle", "moves"]
    assert wordpiece_vocabulary(counts, 100, min_frequency=2)[base:] == ["circle", "moves", "red"]


def test_budget_too_small_for_the_characters_names_vocab_size():
    with pytest.raises(ValueError, match=r"vocab_size=10 cannot hold .* characters"):
        wordpiece_vocabulary(count_words(CAPTIONS), 10)
