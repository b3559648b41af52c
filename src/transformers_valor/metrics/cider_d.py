"""CIDEr-D with document frequencies fixed once from a reference corpus: the reward of self-critical sequence
training (SCST) fine-tuning. See `docs/metrics.md`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Literal

import numpy as np

from .captioning import _validate_captions, ptb_tokenize

__all__ = ["CiderD"]


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
        raw = [r for refs in refs_corpus for r in refs]
        flat = ptb_tokenize(raw, tokenizer)
        df = self._document_frequencies(flat, [len(refs) for refs in refs_corpus])
        self.ref_len = math.log(float(len(refs_corpus)))
        self._idf = self.ref_len - np.log(np.maximum(df, 1.0))  # (V,)
        # Raw caption -> encoded tokens; corpus captions need no tokenisation during training.
        self._ref_cache: dict[str, _Sentence] = {}
        for caption, sentence in zip(raw, flat):
            if caption not in self._ref_cache:
                self._ref_cache[caption] = self._encode(sentence.split(), {})

    def _document_frequencies(self, flat: list[str], counts: list[int]) -> np.ndarray:
        """Fill the n-gram vocabulary from the tokenised corpus and count, per n-gram id, the reference sets
        (`counts[k]` consecutive sentences of `flat` each) that contain it."""
        doc_freq: Counter[int] = Counter()
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
        return df

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

    def _encode_references(
        self, references: Sequence[Sequence[str]], unseen: dict[tuple[str, ...], int]
    ) -> tuple[list[_Sentence], np.ndarray]:
        """Encoded references of all candidate-reference pairs (cached for corpus captions), and the index of
        the candidate of every pair."""
        ref_owner, refs = [], []
        for i, ref_list in enumerate(references):
            for ref in ref_list:
                encoded = self._ref_cache.get(ref)
                if encoded is None:
                    encoded = self._encode(ptb_tokenize([ref], self.tokenizer)[0].split(), unseen)
                refs.append(encoded)
                ref_owner.append(i)
        return refs, np.asarray(ref_owner, dtype=np.int64)

    def _weights(self, sentence: _Sentence) -> np.ndarray:
        known = sentence.ids < len(self._idf)
        idf = np.full(len(sentence.ids), self.ref_len)  # unseen n-grams have df 0: log(max(1, 0)) = 0
        idf[known] = self._idf[sentence.ids[known]]
        return sentence.counts * idf

    def _norms(self, sentences: list[_Sentence], weights: list[np.ndarray]) -> np.ndarray:
        """(sentences, n) L2 norms of the tf-idf vectors of every n-gram order."""
        norms = np.zeros((len(sentences), self.n))
        for i, (sentence, w) in enumerate(zip(sentences, weights)):
            norms[i] = np.sqrt(np.bincount(sentence.orders, weights=w**2, minlength=self.n))
        return norms

    def _clipped_dots(
        self,
        cand: list[_Sentence],
        cand_w: list[np.ndarray],
        refs: list[_Sentence],
        ref_w: list[np.ndarray],
        ref_owner: np.ndarray,
        vocab_size: int,
    ) -> np.ndarray:
        """(pairs, n) dot products of the clipped candidate and the reference tf-idf vectors of every pair."""
        n, num_pairs = self.n, len(refs)
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
        return dots.astype(np.float64).reshape(num_pairs, n)

    def _length_penalty(
        self, cand: list[_Sentence], refs: list[_Sentence], ref_owner: np.ndarray
    ) -> np.ndarray:
        """(pairs,) Gaussian penalty on the length difference of the candidate and the reference of every pair."""
        lengths_c = np.array([c.length for c in cand], dtype=np.float64)[ref_owner]
        lengths_r = np.array([r.length for r in refs], dtype=np.float64)
        return np.exp(-((lengths_c - lengths_r) ** 2) / (2 * self.sigma**2))

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
        unseen: dict[tuple[str, ...], int] = {}
        cand = [self._encode(s.split(), unseen) for s in ptb_tokenize(candidates, self.tokenizer)]
        # refs: the P candidate-reference pairs' references; ref_owner: (P,) the candidate of each pair.
        refs, ref_owner = self._encode_references(references, unseen)
        vocab_size = len(self._vocab) + len(unseen) + 1

        cand_w = [self._weights(c) for c in cand]
        ref_w = [self._weights(r) for r in refs]
        dots = self._clipped_dots(cand, cand_w, refs, ref_w, ref_owner, vocab_size)  # (P, n)
        denom = self._norms(cand, cand_w)[ref_owner] * self._norms(refs, ref_w)  # (P, n)
        sims = np.divide(dots, denom, out=dots.copy(), where=denom != 0)
        per_pair = sims.mean(axis=1) * self._length_penalty(cand, refs, ref_owner)  # (P,)
        num_refs = np.bincount(ref_owner, minlength=len(cand))
        return 10.0 * np.bincount(ref_owner, weights=per_pair, minlength=len(cand)) / num_refs
