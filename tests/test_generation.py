"""ValorForConditionalGeneration: MGC loss, generate() (greedy, beam, sampling), the unimlm cache, QA prompts."""

import pytest
import torch

from helpers import (
    CLS,
    MASK,
    PAD,
    SEP,
    TINY_TASK_PROMPT_IDS,
    ValorInputsTester,
    tiny_valor_config,
    tiny_valor_l_config,
)
from transformers_valor import ValorForConditionalGeneration
from transformers_valor.data.masking import CaptionMaskingConfig, mask_captions, next_token_labels
from transformers_valor.modeling_valor import compose_question_prompt, strip_trailing_sep


class ValorGenerationTester:
    """A tiny captioning model and a seeded batch."""

    def __init__(self, **overrides):
        self.overrides = overrides

    def create_model(self, seed=0, attn="eager"):
        torch.manual_seed(seed)
        return ValorForConditionalGeneration._from_config(
            tiny_valor_config(**self.overrides), attn_implementation=attn
        ).eval()

    def prepare_inputs(self):
        return ValorInputsTester().prepare_inputs()


def _masked_batch(inputs, model, seed=0):
    config = CaptionMaskingConfig.from_model_config(model.config.text_config)
    return mask_captions(inputs["input_ids"], config, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("objective", ["unimlm", "lm"])
def test_caption_loss_decreases(objective):
    tester = ValorGenerationTester(caption_objective=objective)
    model = tester.create_model().train()
    inputs = tester.prepare_inputs()
    if objective == "unimlm":
        decoder_ids, labels = _masked_batch(inputs, model)
    else:
        decoder_ids, labels = inputs["input_ids"], next_token_labels(inputs["input_ids"], PAD)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(10):
        out = model(
            decoder_ids,
            inputs["attention_mask"],
            inputs["pixel_values_videos"],
            inputs["input_features"],
            labels=labels,
        )
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0] * 0.7, losses


def test_loss_counts_only_labelled_positions():
    tester = ValorGenerationTester()
    model = tester.create_model()
    inputs = tester.prepare_inputs()
    decoder_ids, labels = _masked_batch(inputs, model)
    out = model(decoder_ids, inputs["attention_mask"], inputs["pixel_values_videos"], labels=labels)
    keep = labels != -100
    expected = torch.nn.functional.cross_entropy(out.logits[keep], labels[keep])
    torch.testing.assert_close(out.loss, expected)


def test_blip_habit_labels_equal_input_ids_is_refused_for_unimlm():
    tester = ValorGenerationTester()
    model = tester.create_model()
    inputs = tester.prepare_inputs()
    with pytest.raises(ValueError, match=r"copy its input.*mask_captions"):
        model(
            inputs["input_ids"],
            inputs["attention_mask"],
            inputs["pixel_values_videos"],
            labels=inputs["input_ids"],
        )
    lm = ValorGenerationTester(caption_objective="lm").create_model()
    out = lm(
        inputs["input_ids"],
        inputs["attention_mask"],
        inputs["pixel_values_videos"],
        labels=inputs["input_ids"],
    )
    assert torch.isfinite(out.loss)  # `lm` shifts `labels=input_ids` inside, as BLIP does


def test_strip_trailing_sep_masks_each_rows_sep_and_drops_empty_columns():
    ids = torch.tensor([[CLS, 5, 6, SEP], [CLS, 7, SEP, PAD], [CLS, PAD, PAD, PAD]])
    stripped, mask = strip_trailing_sep(ids, (ids != PAD).long(), SEP, PAD)
    assert stripped.tolist() == [[CLS, 5, 6], [CLS, 7, PAD], [CLS, PAD, PAD]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0], [1, 0, 0]]
    no_sep = torch.tensor([[CLS, 5, 6]])
    assert strip_trailing_sep(no_sep, torch.ones_like(no_sep), SEP, PAD)[0] is no_sep


def test_processor_prefix_with_sep_continues_the_caption():
    tester = ValorGenerationTester()
    model = tester.create_model()
    video = tester.prepare_inputs()["pixel_values_videos"]
    prefix = torch.tensor([[CLS, 11, 12]] * 3)
    with_sep = torch.cat([prefix, torch.full((3, 1), SEP)], dim=1)  # what `processor(text=...)` gives
    expected = model.generate(video, input_ids=prefix, num_beams=1, max_new_tokens=4)
    out = model.generate(video, input_ids=with_sep, num_beams=1, max_new_tokens=4)
    assert torch.equal(out, expected) and out[:, :3].tolist() == prefix.tolist()


@pytest.mark.parametrize("objective", ["unimlm", "lm"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_cache_gives_identical_generations(objective, attn, num_beams):
    tester = ValorGenerationTester(caption_objective=objective)
    model = tester.create_model(attn=attn)
    inputs = tester.prepare_inputs()
    kwargs = dict(
        max_new_tokens=10, min_new_tokens=10, num_beams=num_beams
    )  # never stop early: full 10 steps
    with_cache = model.generate(
        inputs["pixel_values_videos"], inputs["input_features"], use_cache=True, **kwargs
    )
    without = model.generate(
        inputs["pixel_values_videos"], inputs["input_features"], use_cache=False, **kwargs
    )
    assert with_cache.shape == (3, 11)
    assert torch.equal(with_cache, without)
    assert (with_cache[:, 0] == CLS).all()


def test_cache_never_keeps_the_mask_slot_and_decoder_sees_only_new_tokens():
    tester = ValorGenerationTester()
    model = tester.create_model()
    inputs = tester.prepare_inputs()
    seen = []
    hook = model.valor.text_model.embeddings.register_forward_hook(
        lambda m, args, out: seen.append(args[0].clone())
    )
    cache_lengths = []
    model.register_forward_hook(lambda module, args, out: cache_lengths.append(out.cache.get_seq_length()))
    out = model.generate(
        inputs["pixel_values_videos"], max_new_tokens=4, min_new_tokens=4, num_beams=1, use_cache=True
    )
    hook.remove()
    # Step 1 feeds [CLS] [MASK]; later steps the newest word and a fresh [MASK].
    assert [ids.shape[1] for ids in seen] == [2, 2, 2, 2]
    assert all((ids[:, -1] == MASK).all() for ids in seen)
    assert torch.equal(seen[1][:, 0], out[:, 1])
    # After each step the cache holds the real tokens only: [CLS], [CLS] w1, ...
    assert cache_lengths == [1, 2, 3, 4]


def test_encoders_run_once_per_generate_call():
    tester = ValorGenerationTester()
    model = tester.create_model()
    inputs = tester.prepare_inputs()
    calls = {"video": 0, "audio": 0}
    model.valor.vision_model.register_forward_hook(lambda *a: calls.__setitem__("video", calls["video"] + 1))
    model.valor.audio_model.register_forward_hook(lambda *a: calls.__setitem__("audio", calls["audio"] + 1))
    model.generate(inputs["pixel_values_videos"], inputs["input_features"], num_beams=3, max_new_tokens=5)
    assert calls == {"video": 1, "audio": 1}


def test_beam_search_returns_requested_sequences_and_sampling_is_seeded():
    tester = ValorGenerationTester()
    model = tester.create_model()
    inputs = tester.prepare_inputs()
    beams = model.generate(
        inputs["pixel_values_videos"], num_beams=3, num_return_sequences=3, max_new_tokens=6, min_new_tokens=6
    )
    assert beams.shape == (9, 7)
    torch.manual_seed(5)
    first = model.generate(inputs["pixel_values_videos"], do_sample=True, top_k=5, max_new_tokens=6)
    torch.manual_seed(5)
    second = model.generate(inputs["pixel_values_videos"], do_sample=True, top_k=5, max_new_tokens=6)
    assert torch.equal(first, second)


def test_generation_stops_at_sep():
    tester = ValorGenerationTester()
    model = tester.create_model()
    with torch.no_grad():
        model.cls.predictions.bias.zero_()
        model.cls.predictions.bias[SEP] = 100.0  # make [SEP] the certain next token
    out = model.generate(tester.prepare_inputs()["pixel_values_videos"], max_new_tokens=10)
    assert out.tolist() == [[CLS, SEP]] * 3


@pytest.mark.parametrize("modalities", ["video", "audio", "both"])
def test_modality_choice_changes_the_conditioning(modalities):
    tester = ValorGenerationTester()
    model = tester.create_model()
    inputs = tester.prepare_inputs()
    video_states, audio_states = model.encode_modalities(
        inputs["pixel_values_videos"], inputs["input_features"], modalities
    )
    assert (video_states is not None) == (modalities in ("video", "both"))
    assert (audio_states is not None) == (modalities in ("audio", "both"))
    if video_states is not None:
        assert video_states.shape == (3, 4 * 16, 32)
    out = model.generate(
        inputs["pixel_values_videos"], inputs["input_features"], modalities=modalities, max_new_tokens=3
    )
    assert out.shape[0] == 3


def test_text_only_and_bad_modality_arguments_are_rejected():
    tester = ValorGenerationTester()
    model = tester.create_model()
    inputs = tester.prepare_inputs()
    with pytest.raises(ValueError, match="at least one modality"):
        model.generate()
    with pytest.raises(ValueError, match="at least one modality"):
        model(inputs["input_ids"])
    with pytest.raises(ValueError, match="needs `input_features`"):
        model.generate(inputs["pixel_values_videos"], modalities="audio")
    with pytest.raises(ValueError, match="'video', 'audio' or 'both'"):
        model.generate(inputs["pixel_values_videos"], modalities="smell")
    with pytest.raises(ValueError, match="Batch sizes"):
        model(inputs["input_ids"][:2], pixel_values_videos=inputs["pixel_values_videos"])
    with pytest.raises(ValueError, match="labels"):
        model(
            inputs["input_ids"],
            pixel_values_videos=inputs["pixel_values_videos"],
            labels=inputs["input_ids"][:, :3],
        )


def test_prompt_and_video_batch_sizes_must_match():
    tester = ValorGenerationTester()
    model = tester.create_model()
    inputs = tester.prepare_inputs()  # 3 samples
    prompts = torch.tensor([[1, 6, 7, 2], [1, 8, 9, 2]])
    with pytest.raises(ValueError, match=r"Batch sizes of the inputs differ: .*'prompt_ids': 2"):
        model.generate(inputs["pixel_values_videos"], prompt_ids=prompts, max_new_tokens=3)
    with pytest.raises(ValueError, match=r"Batch sizes of the inputs differ: .*'input_ids': 2"):
        model.generate(inputs["pixel_values_videos"], input_ids=prompts[:, :1], max_new_tokens=3)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_question_answering_with_prompt_prefix(num_beams):
    tester = ValorGenerationTester(use_task_prompt=True)
    model = tester.create_model()
    inputs = tester.prepare_inputs()
    question = torch.randint(5, 99, (3, 4), generator=torch.Generator().manual_seed(2))
    question_mask = torch.ones_like(question)
    question_mask[0, 3] = 0
    kwargs = dict(
        prompt_ids=question,
        prompt_attention_mask=question_mask,
        max_new_tokens=6,
        min_new_tokens=6,
        num_beams=num_beams,
    )
    with_cache = model.generate(inputs["pixel_values_videos"], use_cache=True, **kwargs)
    without = model.generate(inputs["pixel_values_videos"], use_cache=False, **kwargs)
    assert torch.equal(with_cache, without)
    first_step = model(
        with_cache[:, :1],
        pixel_values_videos=inputs["pixel_values_videos"],
        prompt_ids=question,
        prompt_attention_mask=question_mask,
        generation_step=True,
    ).logits
    other_question = model(
        with_cache[:, :1],
        pixel_values_videos=inputs["pixel_values_videos"],
        prompt_ids=question + 1,
        prompt_attention_mask=question_mask,
        generation_step=True,
    ).logits
    assert first_step.shape == (3, 1, 99) and not torch.allclose(first_step, other_question)
    # Training on an answer with the question as prefix.
    answers = inputs["input_ids"]
    decoder_ids, labels = _masked_batch(inputs, model)
    out = model(
        decoder_ids,
        inputs["attention_mask"],
        inputs["pixel_values_videos"],
        prompt_ids=question,
        prompt_attention_mask=question_mask,
        labels=labels,
    )
    assert out.logits.shape == (*answers.shape, 99) and torch.isfinite(out.loss)


# ----------------------------------------------------------------------------------- task prompts and QA
def _valor_l_captioner(attn="eager"):
    torch.manual_seed(0)
    return ValorForConditionalGeneration._from_config(tiny_valor_l_config(), attn_implementation=attn).eval()


def _prompt(name, batch_size):
    return torch.tensor([TINY_TASK_PROMPT_IDS[name]]).repeat(batch_size, 1)


@torch.no_grad()
def test_valor_l_decoder_runs_with_the_captioning_prompt():
    model = _valor_l_captioner()
    inputs = ValorInputsTester().prepare_inputs()
    decoder_ids, _ = _masked_batch(inputs, model)
    args = (decoder_ids, inputs["attention_mask"], inputs["pixel_values_videos"])
    logits = model(*args).logits
    torch.testing.assert_close(logits, model(*args, prompt_ids=_prompt("captioning", 3)).logits)
    assert not torch.allclose(logits, model(*args, use_task_prompt=False).logits, atol=1e-4)
    kwargs = dict(max_new_tokens=5, min_new_tokens=5)
    for num_beams in (1, 3):
        ids = model.generate(inputs["pixel_values_videos"], num_beams=num_beams, **kwargs)
        explicit = model.generate(
            inputs["pixel_values_videos"], prompt_ids=_prompt("captioning", 3), num_beams=num_beams, **kwargs
        )
        assert torch.equal(ids, explicit)


def _padded_questions():
    """`[CLS] q.. [SEP]` of different lengths, padded with 0 at the end."""
    return torch.tensor([[CLS, 7, 8, 9, SEP], [CLS, 10, SEP, PAD, PAD], [CLS, 11, 12, SEP, PAD]])


def test_qa_prompt_is_composed_token_by_token():
    """VALOR-L: `[CLS]` + "answer the question" without its [CLS]/[SEP] + the question without its [CLS]."""
    questions = _padded_questions()
    instruction = TINY_TASK_PROMPT_IDS["qa"]
    expected_rows = [[CLS, *instruction[1:-1], *row[1:]] for row in questions.tolist()]
    composed, mask = compose_question_prompt(questions, (questions != PAD).long(), _prompt("qa", 3))
    assert composed.tolist() == expected_rows
    assert mask.tolist() == [[int(token != PAD) for token in row] for row in expected_rows]
    model = _valor_l_captioner()
    ids, prompt_mask = model.question_prompt(questions)
    assert ids.tolist() == expected_rows and torch.equal(prompt_mask, mask)
    alone, alone_mask = model.question_prompt(questions, use_task_prompt=False)  # VALOR-B: the question alone
    assert torch.equal(alone, questions) and torch.equal(alone_mask, (questions != PAD).long())


@torch.no_grad()
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_question_ids_decode_as_the_composed_prompt(attn):
    model = _valor_l_captioner(attn)
    inputs = ValorInputsTester().prepare_inputs()
    questions = _padded_questions()
    composed, composed_mask = model.question_prompt(questions)
    kwargs = dict(max_new_tokens=4, min_new_tokens=4, num_beams=1)
    by_question = model.generate(inputs["pixel_values_videos"], question_ids=questions, **kwargs)
    by_prompt = model.generate(inputs["pixel_values_videos"], prompt_ids=composed, **kwargs)
    assert torch.equal(by_question, by_prompt)
    decoder_ids, labels = _masked_batch(inputs, model)
    args = (decoder_ids, inputs["attention_mask"], inputs["pixel_values_videos"])
    out = model(*args, question_ids=questions, labels=labels)
    torch.testing.assert_close(
        out.logits, model(*args, prompt_ids=composed, prompt_attention_mask=composed_mask).logits
    )
    with pytest.raises(ValueError, match="not both"):
        model(*args, question_ids=questions, prompt_ids=composed)


@torch.no_grad()
def test_qa_logits_agree_between_eager_and_sdpa():
    inputs = ValorInputsTester().prepare_inputs()
    questions = _padded_questions()
    outs = []
    for attn in ("eager", "sdpa"):
        model = _valor_l_captioner(attn)
        decoder_ids, _ = _masked_batch(inputs, model)
        outs.append(
            model(
                decoder_ids, inputs["attention_mask"], inputs["pixel_values_videos"], question_ids=questions
            )
        )
    torch.testing.assert_close(outs[0].logits, outs[1].logits, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_prompt_mask_defaults_to_prompt_not_pad():
    """`generate(prompt_ids=...)` without a mask masks the padding (`prompt != 0`), as the reference does."""
    model = ValorGenerationTester().create_model()
    inputs = ValorInputsTester().prepare_inputs()
    questions = _padded_questions()
    kwargs = dict(max_new_tokens=5, min_new_tokens=5, num_beams=1)
    no_mask = model.generate(inputs["pixel_values_videos"], prompt_ids=questions, **kwargs)
    derived = model.generate(
        inputs["pixel_values_videos"],
        prompt_ids=questions,
        prompt_attention_mask=(questions != PAD).long(),
        **kwargs,
    )
    assert torch.equal(no_mask, derived)
    first = model(
        no_mask[:, :1],
        pixel_values_videos=inputs["pixel_values_videos"],
        prompt_ids=questions,
        generation_step=True,
    )
    seeing_padding = model(
        no_mask[:, :1],
        pixel_values_videos=inputs["pixel_values_videos"],
        prompt_ids=questions,
        prompt_attention_mask=torch.ones_like(questions),
        generation_step=True,
    )
    assert not torch.allclose(first.logits[1:], seeing_padding.logits[1:], atol=1e-5)  # rows with padding


def test_qa_loss_is_the_mean_of_per_answer_means():
    """VALOR's QA loss (`forward_qa_single`): token cross-entropy averaged within each answer, then over answers."""
    model = ValorGenerationTester().create_model()
    inputs = ValorInputsTester().prepare_inputs()
    answers = inputs["input_ids"]
    labels = torch.full_like(answers, -100)
    labels[0, 1:4] = answers[0, 1:4]  # three labelled tokens
    labels[1, 2] = answers[1, 2]  # one
    labels[2, 1:3] = answers[2, 1:3]  # two
    decoder_ids = answers.masked_fill(labels != -100, MASK)
    out = model(
        decoder_ids,
        inputs["attention_mask"],
        inputs["pixel_values_videos"],
        question_ids=_padded_questions(),
        labels=labels,
    )
    per_answer = []
    for row in range(3):
        losses = [
            torch.nn.functional.cross_entropy(out.logits[row, pos], labels[row, pos])
            for pos in range(labels.shape[1])
            if labels[row, pos] != -100
        ]
        per_answer.append(torch.stack(losses).mean())
    torch.testing.assert_close(out.loss, torch.stack(per_answer).mean())
    token_mean = torch.nn.functional.cross_entropy(out.logits[labels != -100], labels[labels != -100])
    assert not torch.isclose(out.loss, token_mean)  # the caption loss would weight long answers more


# ------------------------------------------------------------------------------------------ attentions
def test_forward_returns_self_and_cross_attentions_and_tuples():
    tester = ValorGenerationTester()
    model = tester.create_model()
    inputs = tester.prepare_inputs()
    decoder_ids, labels = _masked_batch(inputs, model)
    args = (decoder_ids, inputs["attention_mask"], inputs["pixel_values_videos"], inputs["input_features"])
    out = model(*args, output_attentions=True, output_hidden_states=True)
    modality_tokens = 4 * 16 + 2 * 9  # video frames x tokens + audio clips x tokens
    assert len(out.cross_attentions) == 2 and out.cross_attentions[0].shape == (3, 4, 7, modality_tokens)
    torch.testing.assert_close(out.cross_attentions[0].sum(-1), torch.ones(3, 4, 7))  # concat layout
    assert out.attentions[0].shape == (3, 4, 7, 7) and len(out.hidden_states) == 3
    as_tuple = model(*args, labels=labels, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], model(*args, labels=labels).loss)


@pytest.mark.parametrize("num_beams", [1, 2])
def test_generate_returns_cross_attentions_per_step(num_beams):
    tester = ValorGenerationTester()
    model = tester.create_model()
    inputs = tester.prepare_inputs()
    out = model.generate(
        inputs["pixel_values_videos"],
        num_beams=num_beams,
        beam_ranking="transformers",
        max_new_tokens=3,
        min_new_tokens=3,
        output_attentions=True,
        return_dict_in_generate=True,
    )
    assert len(out.cross_attentions) == len(out.attentions) == 3
    first_layer = out.cross_attentions[0][0]  # step 0: [CLS ; MASK] over the 4 x 16 video tokens
    assert first_layer.shape == (3 * num_beams, 4, 2, 4 * 16)
    expected = model(
        out.sequences[:, :1],  # [CLS] in every row
        pixel_values_videos=inputs["pixel_values_videos"],
        generation_step=True,
        output_attentions=True,
    ).cross_attentions[0]
    torch.testing.assert_close(first_layer[::num_beams], expected)
    plain = model.generate(
        inputs["pixel_values_videos"], num_beams=1, max_new_tokens=3, return_dict_in_generate=True
    )
    assert not hasattr(plain, "cross_attentions")


def test_static_cache_is_refused_with_the_reason():
    model = ValorGenerationTester().create_model()
    inputs = ValorInputsTester().prepare_inputs()
    with pytest.raises(NotImplementedError, match="static"):
        model.generate(inputs["pixel_values_videos"], inputs["input_features"], cache_implementation="static")
