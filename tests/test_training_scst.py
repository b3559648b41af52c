"""SCST helpers (`transformers_valor.training.scst`): exact log-probabilities, scored tokens, rewards."""

import numpy as np
import pytest
import torch

from training_helpers import tiny_generator
from transformers_valor.metrics import CiderD
from transformers_valor.training import SCSTArguments, scored_token_mask, scst_rewards, sequence_log_probs


@pytest.mark.parametrize("objective", ["unimlm", "lm"])
def test_sequence_log_probs_match_per_position_reference(tiny_processor_dir, objective):
    model = tiny_generator(tiny_processor_dir, caption_objective=objective)
    video_states = torch.randn(2, 6, 32)
    prompt_ids = torch.tensor([[2, 20, 21, 3], [2, 22, 3, 0]])
    prompt_mask = (prompt_ids != 0).long()
    torch.manual_seed(1)
    sequences = model.generate(
        video_states=video_states,
        prompt_ids=prompt_ids,
        prompt_attention_mask=prompt_mask,
        do_sample=True,
        top_k=0,
        max_new_tokens=6,
    )
    # Force one sequence to stop early, so that padding after [SEP] is exercised.
    sequences[1, 3] = model.config.text_config.eos_token_id
    sequences[1, 4:] = model.config.text_config.pad_token_id
    log_probs, mask = sequence_log_probs(
        model, sequences, video_states=video_states, prompt_ids=prompt_ids, prompt_attention_mask=prompt_mask
    )
    chunked, _ = sequence_log_probs(
        model,
        sequences,
        video_states=video_states,
        prompt_ids=prompt_ids,
        prompt_attention_mask=prompt_mask,
        chunk_size=3,
    )
    torch.testing.assert_close(chunked, log_probs)
    assert mask[1].tolist() == [True, True, True] + [False] * (sequences.shape[1] - 4)
    reference = torch.zeros_like(log_probs)
    with torch.no_grad():
        for n in range(sequences.shape[0]):
            for k in range(1, sequences.shape[1]):
                if not mask[n, k - 1]:
                    continue
                # One decoding step, exactly as `generate` runs it: the prefix, plus a [MASK] for unimlm.
                logits = model(
                    input_ids=sequences[n : n + 1, :k],
                    video_states=video_states[n : n + 1],
                    prompt_ids=prompt_ids[n : n + 1],
                    prompt_attention_mask=prompt_mask[n : n + 1],
                    generation_step=True,
                ).logits[0, -1]
                reference[n, k - 1] = torch.log_softmax(logits, -1)[sequences[n, k]]
    torch.testing.assert_close(log_probs, reference, atol=1e-5, rtol=1e-5)


def test_scored_token_mask_stops_after_first_sep():
    sequences = torch.tensor([[2, 5, 6, 3, 0, 0], [2, 5, 6, 7, 8, 9]])
    assert scored_token_mask(sequences, 3).tolist() == [
        [True, True, True, False, False],
        [True, True, True, True, True],
    ]


def test_scst_rewards_are_cider_of_sample_minus_greedy():
    references = [["a red circle moves up", "a red circle goes up"], ["a blue square moves left"]]
    scorer = CiderD(references + [["a green triangle goes down"]])
    sampled = ["a red circle moves up", "a blue circle", "a blue square moves left", "a square"]
    greedy = ["a red circle", "a blue square"]
    rewards, stats = scst_rewards(scorer, sampled, greedy, references, num_samples=2)
    sample_scores = scorer.score(sampled, [references[0]] * 2 + [references[1]] * 2)
    greedy_scores = scorer.score(greedy, references)
    expected = sample_scores - np.repeat(greedy_scores, 2)
    np.testing.assert_allclose(rewards.numpy(), expected, rtol=1e-6)
    assert rewards[0] > 0 and stats["greedy_cider"] == pytest.approx(greedy_scores.mean())


def test_cider_of_a_caption_sharing_no_ngram_is_zero():
    scorer = CiderD([["a red circle moves up"]])
    np.testing.assert_array_equal(scorer.score(["zzz qqq"], [["a red circle moves up"]]), [0.0])


def test_scst_arguments_are_validated():
    with pytest.raises(ValueError, match="num_samples"):
        SCSTArguments(num_samples=0)
    with pytest.raises(ValueError, match="temperature"):
        SCSTArguments(temperature=0.0)
