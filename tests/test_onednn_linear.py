"""use_onednn_linear: oneDNN kernels in the text tower and MLM head, same parameters and outputs, misuse refused."""

import pytest
import torch

from helpers import ValorModelTester
from transformers_valor import ValorForConditionalGeneration
from transformers_valor.onednn_linear import OneDNNLinear, use_onednn_linear


@pytest.fixture
def tester() -> ValorModelTester:
    return ValorModelTester()


def test_text_linears_are_replaced_with_the_same_parameters(tester):
    model = tester.create_model(ValorForConditionalGeneration)
    before = {name: param for name, param in model.named_parameters()}
    state = {name: value.clone() for name, value in model.state_dict().items()}
    assert use_onednn_linear(model) is model
    text_layers = [m for m in model.valor.text_model.modules() if isinstance(m, torch.nn.Linear)]
    assert text_layers and all(type(m) is OneDNNLinear for m in text_layers)
    assert type(model.cls.predictions.decoder) is OneDNNLinear
    assert any(type(m) is torch.nn.Linear for m in model.valor.vision_model.modules())  # towers untouched
    after = dict(model.named_parameters())
    assert after.keys() == before.keys() and all(after[name] is before[name] for name in before)
    embeddings = model.valor.text_model.get_input_embeddings().weight
    assert model.cls.predictions.decoder.weight is embeddings  # the tie survives
    assert model.state_dict().keys() == state.keys()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, state[name], rtol=0, atol=0, msg=name)


def test_outputs_and_captions_match_the_eager_model(tester):
    model = tester.create_model(ValorForConditionalGeneration)
    inputs = tester.prepare_inputs()
    kwargs = dict(num_beams=1, max_new_tokens=5, min_new_tokens=5)
    with torch.no_grad():
        eager_logits = model(**inputs).logits
        eager = model.generate(inputs["pixel_values_videos"], inputs["input_features"], **kwargs)
        use_onednn_linear(model)
        logits = model(**inputs).logits
        captions = model.generate(inputs["pixel_values_videos"], inputs["input_features"], **kwargs)
    torch.testing.assert_close(logits, eager_logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(captions, eager)


def test_layer_matches_f_linear_with_and_without_bias():
    torch.manual_seed(0)
    for bias in (True, False):
        linear = torch.nn.Linear(24, 40, bias=bias).eval()
        hidden = torch.randn(3, 5, 24)
        with torch.no_grad():
            torch.testing.assert_close(OneDNNLinear.from_linear(linear)(hidden), linear(hidden))


def test_gradients_and_training_mode_are_refused(tester):
    model = tester.create_model(ValorForConditionalGeneration)
    use_onednn_linear(model)
    layer = model.cls.predictions.decoder
    with pytest.raises(RuntimeError, match="inference"):
        layer(torch.randn(2, layer.in_features))
    with pytest.raises(ValueError, match="model.eval"):
        use_onednn_linear(tester.create_model(ValorForConditionalGeneration).train())


def test_packed_weights_give_the_same_results_and_follow_weight_changes():
    torch.manual_seed(0)
    linear = torch.nn.Linear(24, 40).eval()
    layer = OneDNNLinear.from_linear(linear, pack_for_rows=2)
    for rows in (1, 2, 7):  # the layout is for 2 rows; any number is computed right
        hidden = torch.randn(rows, 24)
        with torch.no_grad():
            torch.testing.assert_close(layer(hidden), linear(hidden))
    assert layer.kernel_weight() is not layer.weight and "_packed" not in dict(layer.state_dict())
    with torch.no_grad():
        linear.weight.mul_(-2.0)  # in place: the packed copy must be rebuilt
        torch.testing.assert_close(layer(hidden), linear(hidden))
        layer.load_state_dict({"weight": torch.randn(40, 24), "bias": torch.zeros(40)})
        torch.testing.assert_close(layer(hidden), hidden @ layer.weight.T)
    with pytest.raises(ValueError, match="pack_for_rows"):
        OneDNNLinear.from_linear(linear, pack_for_rows=0)


def test_packing_covers_the_per_step_layers_only(tester):
    model = tester.create_model(ValorForConditionalGeneration)
    inputs = tester.prepare_inputs()
    kwargs = dict(num_beams=1, max_new_tokens=5, min_new_tokens=5)
    with torch.no_grad():
        eager = model.generate(inputs["pixel_values_videos"], inputs["input_features"], **kwargs)
        use_onednn_linear(model, pack_for_rows=2)
        captions = model.generate(inputs["pixel_values_videos"], inputs["input_features"], **kwargs)
    assert torch.equal(captions, eager)
    packed = {n for n, m in model.named_modules() if isinstance(m, OneDNNLinear) and m.pack_for_rows}
    layer = "valor.text_model.encoder.layer.0."
    assert {f"{layer}attention.self.query", f"{layer}intermediate.dense", f"{layer}output.dense"} <= packed
    cross = {n for n in packed if ".crossattention" in n and n.startswith(layer)}
    assert cross and all(not n.endswith(("self.key", "self.value")) for n in cross)
    assert not any(n.startswith("cls.") for n in packed)
