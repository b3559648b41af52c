"""compile_valor and torch.compile support: every tower's and head's forward traces as one graph (fullgraph=True),
and the inductor-compiled model gives the eager outputs, gradients and captions."""

import pytest
import torch

from helpers import (
    ValorAudioModelTester,
    ValorModelTester,
    ValorTextModelTester,
    ValorVideoSwinModelTester,
)
from transformers_valor import (
    ValorAudioModel,
    ValorForConditionalGeneration,
    ValorForPreTraining,
    ValorForRetrieval,
    ValorModel,
    ValorTextModel,
    compile_valor,
)
from transformers_valor.compilation import compiled_parts, is_compiled
from transformers_valor.data.masking import CaptionMaskingConfig, mask_captions


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch (no cached graphs or recompilation counts from another test)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def full_graph(module):
    """`module` traced by Dynamo as one graph: any graph break raises (the backend adds no compile time)."""
    return torch.compile(module, fullgraph=True, backend="eager")


def pretraining_inputs(tester: ValorModelTester) -> dict:
    inputs = tester.prepare_inputs()
    masking = CaptionMaskingConfig.from_model_config(tester.get_config().text_config)
    inputs["caption_input_ids"], inputs["labels"] = mask_captions(
        inputs["input_ids"], masking, torch.Generator().manual_seed(0)
    )
    return inputs


def assert_outputs_close(compiled, eager, atol=1e-5):
    for name in eager.keys():
        value = eager[name]
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(compiled[name], value, atol=atol, rtol=1e-4, msg=name)


# --------------------------------------------------------------------------------------- no graph breaks
def test_text_tower_encoder_and_cached_decoder_trace_as_one_graph():
    tester = ValorTextModelTester()
    torch.manual_seed(0)
    model = ValorTextModel(tester.get_config()).eval()
    ids, mask = tester.prepare_inputs()
    video = torch.randn(ids.shape[0], 5, model.config.hidden_size)
    with torch.no_grad():
        encoder = full_graph(model)(input_ids=ids, attention_mask=mask)
        decoder = full_graph(model)(
            input_ids=ids, attention_mask=mask, video_states=video, is_decoder=True, use_cache=True
        )
        assert_outputs_close(encoder, model(input_ids=ids, attention_mask=mask))
        eager = model(input_ids=ids, attention_mask=mask, video_states=video, is_decoder=True, use_cache=True)
    torch.testing.assert_close(decoder.last_hidden_state, eager.last_hidden_state)


@pytest.mark.parametrize("tower", ["video_swin", "audio"])
def test_media_towers_trace_as_one_graph(tower):
    if tower == "video_swin":
        tester = ValorVideoSwinModelTester()
        model, inputs = tester.create_model(), tester.prepare_inputs()
    else:
        tester = ValorAudioModelTester()
        torch.manual_seed(0)
        model, inputs = ValorAudioModel(tester.get_config()).eval(), tester.prepare_inputs()
    with torch.no_grad():
        assert_outputs_close(full_graph(model)(inputs), model(inputs))


@pytest.mark.parametrize(
    "cls", [ValorModel, ValorForRetrieval, ValorForConditionalGeneration, ValorForPreTraining]
)
def test_head_forwards_trace_as_one_graph(cls):
    tester = ValorModelTester()
    model = tester.create_model(cls)
    inputs = pretraining_inputs(tester)
    if cls is ValorForConditionalGeneration:
        inputs["input_ids"] = inputs.pop("caption_input_ids")
    elif cls is not ValorForPreTraining:
        del inputs["caption_input_ids"], inputs["labels"]
    if cls is ValorForRetrieval:
        inputs["return_loss"] = True
    with torch.no_grad():
        assert_outputs_close(full_graph(model)(**inputs), model(**inputs))


def test_generation_step_traces_as_one_graph():
    """The step `generate()` runs: the [MASK]-slot forward on a filled cache."""
    tester = ValorModelTester()
    model = tester.create_model(ValorForConditionalGeneration)
    inputs = tester.prepare_inputs()
    video, audio = model.encode_modalities(inputs["pixel_values_videos"], inputs["input_features"])
    step = dict(
        input_ids=inputs["input_ids"][:, :1],
        video_states=video,
        audio_states=audio,
        use_cache=True,
        generation_step=True,
    )
    with torch.no_grad():
        # The second step (cached [CLS], then the new token): each run gets its own freshly filled cache.
        mask = torch.ones(3, 2, dtype=torch.long)
        compiled = full_graph(model)(**step, attention_mask=mask, cache=model(**step).cache)
        eager = model(**step, attention_mask=mask, cache=model(**step).cache)
    torch.testing.assert_close(compiled.logits, eager.logits)


# ------------------------------------------------------------------------------------------ compile_valor
def test_compile_valor_compiles_every_part_in_place():
    model = ValorModelTester().create_model(ValorForPreTraining)
    names = set(model.state_dict())
    assert compile_valor(model, backend="eager") is model
    parts = compiled_parts(model)
    assert set(parts) == {"valor.vision_model", "valor.audio_model", "valor.text_model", "cls"}
    assert all(is_compiled(part) for part in parts.values())
    assert set(model.state_dict()) == names  # checkpoints and save_pretrained see the eager names
    with pytest.raises(TypeError, match="ValorModel or a VALOR head"):
        compile_valor(torch.nn.Linear(2, 2))


def test_inductor_compiled_tower_equals_eager():
    """The fast check of inductor's numerics: the audio tower (the smallest graph) compiled with fullgraph=True
    gives the eager output; the slow tests below cover the training step and generation."""
    tester = ValorAudioModelTester()
    torch.manual_seed(0)
    model, inputs = ValorAudioModel(tester.get_config()).eval(), tester.prepare_inputs()
    with torch.no_grad():
        assert_outputs_close(torch.compile(model, fullgraph=True)(inputs), model(inputs))


@pytest.mark.slow
def test_inductor_pretraining_step_equals_eager():
    """Loss and gradients of an inductor-compiled pretraining step equal eager (the `training.torch_compile`
    path); in eval mode, so that no dropout makes the two runs differ."""
    tester = ValorModelTester()
    inputs = pretraining_inputs(tester)
    results = []
    for compiled in (False, True):
        model = tester.create_model(ValorForPreTraining)
        if compiled:
            compile_valor(model, fullgraph=True)
        loss = model(**inputs).loss
        loss.backward()
        results.append(
            (loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
        )
    (eager_loss, eager_grads), (loss, grads) = results
    torch.testing.assert_close(loss, eager_loss, atol=1e-5, rtol=1e-5)
    assert grads.keys() == eager_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], atol=1e-5, rtol=1e-3, msg=name)


@pytest.mark.slow
def test_inductor_compiled_generate_gives_eager_captions():
    tester = ValorModelTester()
    model = tester.create_model(ValorForConditionalGeneration)
    inputs = tester.prepare_inputs()
    kwargs = dict(num_beams=1, max_new_tokens=4, min_new_tokens=4)
    eager = model.generate(inputs["pixel_values_videos"], inputs["input_features"], **kwargs)
    compiled = compile_valor(model).generate(
        inputs["pixel_values_videos"], inputs["input_features"], **kwargs
    )
    assert torch.equal(compiled, eager)
