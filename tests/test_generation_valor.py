"""VALOR's beam search (`generation_valor.valor_beam_search`) and the generation config the models carry."""

import pytest
import torch
import torch.nn.functional as F
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from helpers import CLS, PAD, SEP, ValorInputsTester, tiny_valor_config, tiny_valor_l_config
from transformers_valor import ValorForConditionalGeneration, ValorForPreTraining, ValorForRetrieval
from transformers_valor.generation_valor import select_beams


def reference_beam_search(step_log_probs, batch_size, vocab_size, beam_size=3, steps=30):
    """
    The reference's `decode_beam` (`model/pretrain.py`), written out plainly: `step_log_probs(prefixes)` gives the
    next-token log-probabilities `(len(prefixes), vocab)` of token-id prefixes (lists, [CLS] excluded). A beam that
    selected [SEP] keeps its score for every candidate; the best beam after the last step wins.

    Returns:
        `(tokens, score)` per sample, the tokens up to and including the first [SEP].
    """
    results = []
    for sample in range(batch_size):
        beams = [([], 0.0, False)]  # (tokens, summed log-prob, finished)
        for _ in range(steps):
            log_probs = step_log_probs(sample, [tokens for tokens, _, _ in beams])
            candidates = []
            for (tokens, score, finished), row in zip(beams, log_probs.tolist()):
                for word in range(vocab_size):
                    if finished:
                        candidates.append((score, tokens, True))
                    else:
                        candidates.append((score + row[word], tokens + [word], word == SEP))
            candidates.sort(key=lambda c: c[0], reverse=True)
            beams = [(tokens, score, finished) for score, tokens, finished in candidates[:beam_size]]
        best = max(beams, key=lambda b: b[1])
        results.append((best[0], best[1]))
    return results


def until_sep(row):
    out = []
    for token in row:
        out.append(token)
        if token == SEP:
            break
    return out


class TableLogitsProcessor(LogitsProcessor):
    """Replaces the model's scores by fixed log-probabilities per generated prefix (and per sample), so that a test
    can build the exact situation where two ranking rules part; unknown prefixes get -30 for every token."""

    def __init__(self, tables, num_beams, vocab_size):
        self.tables, self.num_beams, self.vocab_size = tables, num_beams, vocab_size

    def row(self, sample, prefix):
        row = torch.full((self.vocab_size,), -30.0)
        for token, value in self.tables[sample].get(tuple(prefix), {}).items():
            row[token] = value
        return row

    def __call__(self, input_ids, scores):
        rows = [
            self.row(index // self.num_beams, [t for t in ids.tolist()[1:] if t != PAD])
            for index, ids in enumerate(input_ids)
        ]
        return torch.stack(rows).to(scores)


# Sample 0: a hypothesis finished early, (x, [SEP]), is pushed out of the beam by three continuations that all
# end lower; the reference keeps the best of those, `transformers` (any length penalty) would keep the early one
# in its pool of finished hypotheses. Sample 1: a short hypothesis beats a longer one on the summed
# log-probability but not per token; `length_penalty=1.0` would pick the longer one.
X, Y, Z, P, Q, R, S, T = 10, 11, 12, 13, 14, 15, 16, 17
A, B, C, D = 20, 21, 22, 23
TABLES = [
    {
        (): {X: -0.1, Y: -2.6, Z: -2.7},
        (X,): {SEP: -2.0, P: -0.2, Q: -0.3},
        (X, P): {R: -0.1, S: -0.2},
        (X, Q): {T: -0.15},
        (X, P, R): {SEP: -3.0},
        (X, P, S): {SEP: -3.0},
        (X, Q, T): {SEP: -3.0},
    },
    {
        (): {A: -1.0, B: -1.1},
        (A,): {SEP: -0.5},
        (B,): {C: -0.1},
        (B, C): {D: -0.1},
        (B, C, D): {SEP: -0.3},
    },
]
EXPECTED = [[X, P, R, SEP], [A, SEP]]


def _model(seed=0):
    torch.manual_seed(seed)
    return ValorForConditionalGeneration(tiny_valor_config()).eval()


class SepSchedule(LogitsProcessor):
    """Adds a seeded bias per (sample, step) to the [SEP] score, so that the hypotheses of a random tiny model end
    at varied lengths (its own [SEP] probability barely depends on the prefix)."""

    def __init__(self, batch_size, steps, num_beams, seed):
        generator = torch.Generator().manual_seed(seed)
        self.bias = torch.rand(batch_size, steps + 2, generator=generator) * 9.0 - 6.0  # in [-6, 3)
        self.num_beams = num_beams

    def apply(self, scores, samples, length):
        """`scores` of rows of `samples` whose inputs are `length` long ([CLS] included)."""
        scores = scores.clone()
        scores[:, SEP] += self.bias[samples, length]
        return scores

    def __call__(self, input_ids, scores):
        samples = torch.arange(input_ids.shape[0]) // self.num_beams
        return self.apply(scores, samples, input_ids.shape[1])


@torch.no_grad()
def test_the_reference_ranking_where_transformers_ranks_otherwise():
    model = _model()
    video = ValorInputsTester(batch_size=2).prepare_inputs()["pixel_values_videos"]
    vocab = model.config.text_config.vocab_size
    table = TableLogitsProcessor(TABLES, 3, vocab)

    def table_step(sample, prefixes):
        return torch.stack([TableLogitsProcessor(TABLES, 1, vocab).row(sample, p) for p in prefixes])

    reference = reference_beam_search(table_step, 2, vocab, steps=6)
    assert [tokens for tokens, _ in reference] == EXPECTED
    kwargs = dict(num_beams=3, max_new_tokens=6, logits_processor=LogitsProcessorList([table]))
    valor = model.generate(video, **kwargs)
    assert [until_sep(row[1:].tolist()) for row in valor] == EXPECTED
    scored = model.generate(video, return_dict_in_generate=True, **kwargs)
    torch.testing.assert_close(scored.sequences_scores, torch.tensor([score for _, score in reference]))
    # Both of transformers' rankings give other captions: the test tells them apart.
    pooled = model.generate(video, beam_ranking="transformers", length_penalty=0.0, **kwargs)
    assert until_sep(pooled[0, 1:].tolist()) == [X, SEP]
    normalised = model.generate(video, beam_ranking="transformers", length_penalty=1.0, **kwargs)
    assert until_sep(normalised[1, 1:].tolist()) == [B, C, D, SEP]


@torch.no_grad()
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("use_cache", [True, False])
def test_beam_search_matches_the_reference_on_a_model(seed, use_cache):
    model = _model(seed)
    steps, batch = 8, 4
    inputs = ValorInputsTester(batch_size=batch, seed=seed).prepare_inputs()
    video_states, audio_states = model.encode_modalities(
        inputs["pixel_values_videos"], inputs["input_features"]
    )
    schedule = SepSchedule(batch, steps, 3, seed)

    def model_step(sample, prefixes):
        ids = torch.tensor([[CLS, *p] for p in prefixes])
        rows = torch.full((len(prefixes),), sample)
        logits = model(
            input_ids=ids,
            video_states=video_states[rows],
            audio_states=audio_states[rows],
            generation_step=True,
            use_cache=False,
        ).logits
        return schedule.apply(F.log_softmax(logits[:, -1].float(), dim=-1), rows, ids.shape[1])

    vocab = model.config.text_config.vocab_size
    reference = reference_beam_search(model_step, batch, vocab, steps=steps)
    lengths = {len(tokens) for tokens, _ in reference}
    assert len(lengths) > 1, lengths  # captions of different lengths compete
    out = model.generate(
        video_states=video_states,
        audio_states=audio_states,
        max_new_tokens=steps,
        use_cache=use_cache,
        return_dict_in_generate=True,
        logits_processor=LogitsProcessorList([schedule]),
    )  # the model's generation config: VALOR's beam of 3
    assert [until_sep(row[1:].tolist()) for row in out.sequences] == [tokens for tokens, _ in reference]
    torch.testing.assert_close(
        out.sequences_scores, torch.tensor([score for _, score in reference]), atol=1e-4, rtol=1e-4
    )


def test_select_beams_keeps_finished_scores_and_pads():
    scores = torch.tensor([[-1.0, -2.0]])
    finished = torch.tensor([[True, False]])
    log_probs = torch.log_softmax(torch.tensor([[[0.0, 0.0, 0.0], [3.0, 0.0, 0.0]]]), dim=-1)
    top, parent, tokens, now_finished = select_beams(scores, finished, log_probs, torch.tensor([2]), 0)
    assert parent.tolist() == [[0, 0]] and tokens.tolist() == [[0, 0]]  # the finished beam fills both places
    assert top.tolist() == [[-1.0, -1.0]] and now_finished.all()


def test_models_carry_valor_decoding(tmp_path):
    captioner = _model()
    generation = captioner.generation_config
    assert (generation.num_beams, generation.max_new_tokens, generation.length_penalty) == (3, 30, 0.0)
    assert generation.beam_ranking == "valor"
    assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == (CLS, SEP, PAD)
    for cls in (ValorForPreTraining, ValorForRetrieval):  # what pretraining / retrieval fine-tuning save
        folder = tmp_path / cls.__name__
        torch.manual_seed(0)
        cls(tiny_valor_config()).save_pretrained(folder)
        loaded = ValorForConditionalGeneration.from_pretrained(folder).generation_config
        assert (loaded.num_beams, loaded.max_new_tokens, loaded.length_penalty, loaded.beam_ranking) == (
            3,
            30,
            0.0,
            "valor",
        )
    captioner.save_pretrained(tmp_path / "captioner")
    assert GenerationConfig.from_pretrained(tmp_path / "captioner").beam_ranking == "valor"


@torch.no_grad()
def test_beam_ranking_errors():
    model = _model()
    video = ValorInputsTester(batch_size=1).prepare_inputs()["pixel_values_videos"]
    with pytest.raises(ValueError, match="length_penalty=1.0"):
        model.generate(video, max_new_tokens=3, length_penalty=1.0)
    with pytest.raises(ValueError, match="beam_ranking"):
        model.generate(video, max_new_tokens=3, beam_ranking="shortest")
    with pytest.raises(NotImplementedError, match="output_scores"):
        model.generate(video, max_new_tokens=3, return_dict_in_generate=True, output_scores=True)
    assert (
        model.generate(video, max_new_tokens=3, beam_ranking="transformers", length_penalty=1.0).shape[0] == 1
    )


@torch.no_grad()
def test_valor_l_beam_search_agrees_between_eager_and_sdpa():
    """VALOR-L captioning (the captioning prompt, VALOR's beam ranking) decodes the same with both attentions."""
    inputs = ValorInputsTester(batch_size=3).prepare_inputs()
    outputs = []
    for attn in ("eager", "sdpa"):
        torch.manual_seed(0)
        model = ValorForConditionalGeneration._from_config(
            tiny_valor_l_config(), attn_implementation=attn
        ).eval()
        outputs.append(
            model.generate(
                inputs["pixel_values_videos"],
                inputs["input_features"],
                max_new_tokens=6,
                logits_processor=LogitsProcessorList([SepSchedule(3, 6, 3, seed=0)]),
                return_dict_in_generate=True,
            )
        )
    assert torch.equal(outputs[0].sequences, outputs[1].sequences)
    torch.testing.assert_close(outputs[0].sequences_scores, outputs[1].sequences_scores, atol=1e-4, rtol=1e-4)
