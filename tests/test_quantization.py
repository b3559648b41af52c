"""quantize_dynamic_int8: int8 linear layers in the text tower and MLM head, generation still works, misuse refused."""

import pytest
import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

from helpers import ValorModelTester
from transformers_valor import ValorForConditionalGeneration
from transformers_valor.quantization import quantize_dynamic_int8


def test_text_tower_and_head_become_int8_and_still_caption():
    tester = ValorModelTester()
    model = tester.create_model(ValorForConditionalGeneration)
    inputs = tester.prepare_inputs()
    kwargs = dict(num_beams=1, max_new_tokens=4, min_new_tokens=4)
    eager = model.generate(inputs["pixel_values_videos"], inputs["input_features"], **kwargs)
    assert quantize_dynamic_int8(model) is model
    text_linears = [m for m in model.valor.text_model.modules() if type(m) is torch.nn.Linear]
    assert text_linears == [] and isinstance(model.cls.predictions.decoder, DynamicQuantizedLinear)
    assert any(type(m) is torch.nn.Linear for m in model.valor.vision_model.modules())  # towers stay fp32
    quantized = model.generate(inputs["pixel_values_videos"], inputs["input_features"], **kwargs)
    assert quantized.shape == eager.shape and torch.equal(quantized[:, 0], eager[:, 0])


def test_training_mode_is_refused():
    model = ValorModelTester().create_model(ValorForConditionalGeneration).train()
    with pytest.raises(ValueError, match="model.eval"):
        quantize_dynamic_int8(model)
