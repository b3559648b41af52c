"""The 0-d -> 1-d shim of the temperature / logit scale: every parameter is at least 1-d (FSDP2 shards no 0-d
parameter) and weights written with 0-d scalars (earlier `save_pretrained` folders, the converter's earlier output,
earlier training checkpoints) still load."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import TINY_TASK_PROMPT_IDS, tiny_valor_config, tiny_valor_l_config
from transformers_valor import (
    ValorForConditionalGeneration,
    ValorForPreTraining,
    ValorForRetrieval,
    ValorModel,
)
from transformers_valor.modeling_valor_compat import AtLeast1d

HEADS = (ValorModel, ValorForRetrieval, ValorForConditionalGeneration, ValorForPreTraining)
VARIANTS = {"valor-b": ("temperature", tiny_valor_config), "valor-l": ("logit_scale", tiny_valor_l_config)}


def _scalar(model) -> torch.nn.Parameter:
    valor = model if isinstance(model, ValorModel) else model.valor
    return valor.temperature if valor.config.logit_scale_type == "temperature" else valor.logit_scale


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_parameter_is_at_least_1d(variant):
    _, make_config = VARIANTS[variant]
    model = ValorForPreTraining(make_config(task_prompt_ids=TINY_TASK_PROMPT_IDS))
    assert [name for name, p in model.named_parameters() if p.dim() == 0] == []
    assert _scalar(model).shape == (1,)
    assert model.valor.get_logit_scale().dim() == 0  # the value the heads and outputs use stays a scalar


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_folder_with_a_0d_scalar_loads_into_every_head(variant, tmp_path):
    name, make_config = VARIANTS[variant]
    torch.manual_seed(0)
    model = ValorForPreTraining(make_config(task_prompt_ids=TINY_TASK_PROMPT_IDS))
    with torch.no_grad():
        _scalar(model).fill_(0.0321)
    model.save_pretrained(tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    assert weights[f"valor.{name}"].shape == (1,)  # written 1-d
    # What earlier versions (and the converter before this change) wrote: a 0-d tensor.
    weights[f"valor.{name}"] = weights[f"valor.{name}"].reshape(())
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    for head in HEADS:
        loaded = head.from_pretrained(tmp_path)
        assert _scalar(loaded).shape == (1,), head.__name__
        assert _scalar(loaded).item() == pytest.approx(0.0321), head.__name__


def test_load_state_dict_reshapes_a_0d_scalar():
    """The path of training checkpoints (safetensors `load_model`), the converter and `init_from_encoders`."""
    model = ValorModel(tiny_valor_config())
    state = model.state_dict()
    state["temperature"] = torch.tensor(0.25)
    model.load_state_dict(state, strict=True)
    assert model.temperature.shape == (1,) and model.temperature.item() == 0.25
    # Another shape than 0-d or (1,) is still an error, not silently reshaped.
    state["temperature"] = torch.ones(2)
    with pytest.raises(RuntimeError, match="temperature"):
        model.load_state_dict(state)


def test_at_least_1d_keeps_other_tensors_and_is_its_own_reverse():
    op = AtLeast1d()
    assert op.reverse_op is op
    out = op.convert({"t": [torch.tensor(2.0)]}, ["t"], ["t"])
    assert out["t"].shape == (1,)
    matrix = torch.ones(2, 3)
    assert op.convert({"m": matrix}, ["m"], ["m"])["m"] is matrix
