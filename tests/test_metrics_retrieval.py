"""Tests of transformers_valor.metrics.retrieval: ranks, recall at K and both directions of a text x video
matrix, against hand-computed values."""

import numpy as np
import pytest
import torch

from transformers_valor.metrics import (
    compute_retrieval_metrics,
    compute_text_video_retrieval_metrics,
    retrieval_ranks,
)

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
