"""AdamW and the schedule (`transformers_valor.training.optimization`)."""

from pathlib import Path

import pytest
import torch

from training_helpers import tiny_model_config, tiny_run
from transformers_valor import ValorProcessor
from transformers_valor.training import (
    ModelArguments,
    OptimizerArguments,
    build_model,
    build_optimizer,
    build_scheduler,
    config_from_dict,
)


def test_optimizer_has_no_decay_on_biases_norms_and_temperature(tiny_processor_dir):
    processor = ValorProcessor.from_pretrained(tiny_processor_dir)
    model = build_model(
        ModelArguments(processor=str(tiny_processor_dir), config=tiny_model_config()), processor
    )
    optimizer = build_optimizer(
        model, config_from_dict(tiny_run(Path("."), tiny_processor_dir, Path("."))).optimizer
    )
    assert optimizer.defaults["betas"] == (0.9, 0.98)
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert decay_of[id(named["valor.temperature"])] == 0.0
    assert decay_of[id(named["valor.text_model.embeddings.LayerNorm.weight"])] == 0.0
    assert decay_of[id(named["valor.text_projection.weight"])] == 0.01
    assert model.config.text_config.vocab_size == len(processor.tokenizer)

    # Learning rates per parameter-name prefix of the task's model; the longest prefix wins.
    args = OptimizerArguments(
        learning_rate=1e-3,
        learning_rate_overrides={"valor.vision_model": 1e-5, "valor.vision_model.embeddings": 2e-5},
    )
    lr_of = {id(p): g["lr"] for g in build_optimizer(model, args).param_groups for p in g["params"]}
    for name, param in named.items():
        expected = (
            2e-5
            if name.startswith("valor.vision_model.embeddings")
            else 1e-5
            if name.startswith("valor.vision_model")
            else 1e-3
        )
        assert lr_of[id(param)] == expected, name


def test_scheduler_warms_up_then_decays_linearly():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, OptimizerArguments(learning_rate=1.0, warmup_ratio=0.1), 20)
    rates = []
    for _ in range(20):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[0] == 0.0 and rates[2] == 1.0 and rates[11] == 0.5


def test_tower_learning_rates_apply_under_any_head_and_prefixes_win():
    from helpers import tiny_valor_config
    from transformers_valor import ValorForPreTraining, ValorModel
    from transformers_valor.training.optimization import parameter_learning_rate

    args = OptimizerArguments(
        learning_rate=1e-3,
        text_learning_rate=5e-4,
        vision_learning_rate=1e-4,
        audio_learning_rate=2e-4,
        learning_rate_overrides={"valor.vision_model.patch_embed": 3e-5},
    )
    tower_rates = {"text_model": 5e-4, "cls": 5e-4, "vision_model": 1e-4, "audio_model": 2e-4}
    for model in (ValorForPreTraining(tiny_valor_config()), ValorModel(tiny_valor_config())):
        lr_of = {id(p): g["lr"] for g in build_optimizer(model, args).param_groups for p in g["params"]}
        for name, param in model.named_parameters():
            root = name.removeprefix("valor.").split(".")[0]
            expected = (
                3e-5 if name.startswith("valor.vision_model.patch_embed") else tower_rates.get(root, 1e-3)
            )
            assert lr_of[id(param)] == expected == parameter_learning_rate(name, args), name
    assert (
        parameter_learning_rate("valor.video_projection.weight", args) == 1e-3
    )  # new in VALOR: the base rate


def test_tower_learning_rates_are_typed_yaml_fields(tiny_processor_dir):
    values = tiny_run(Path("."), tiny_processor_dir, Path("."), optimizer={"vision_learning_rate": 1e-4})
    assert config_from_dict(values).optimizer.vision_learning_rate == 1e-4
    values["optimizer"]["audio_learning_rate"] = "fast"
    with pytest.raises(ValueError, match="optimizer.audio_learning_rate"):
        config_from_dict(values)
    values["optimizer"]["audio_learning_rate"] = 0.0
    with pytest.raises(ValueError, match="optimizer.audio_learning_rate"):
        config_from_dict(values)


def _train_five_steps(fused):
    """A small net trained 5 steps by `build_optimizer` (`fused` or `foreach`) and by the same AdamW's
    per-parameter loop, from the same weights; returns the two state dicts and the optimizer."""
    model, loop_model = _small_net(), _small_net()
    args = OptimizerArguments(learning_rate=1e-2, fused=fused)
    optimizer = build_optimizer(model, args)
    loop = build_optimizer(loop_model, args)
    for group in loop.param_groups:
        group["foreach"] = group["fused"] = False
    inputs = torch.randn(32, 8)
    for _ in range(5):
        for net, opt in ((model, optimizer), (loop_model, loop)):
            net(inputs).square().mean().backward()
            opt.step()
            opt.zero_grad()
    return model.state_dict(), loop_model.state_dict(), optimizer


def test_optimizer_is_fused_by_default_and_makes_the_loops_update():
    assert OptimizerArguments().fused
    trained, loop, optimizer = _train_five_steps(fused=True)
    assert all(group["fused"] and not group["foreach"] for group in optimizer.param_groups)
    initial = _small_net().state_dict()
    for name, param in trained.items():
        assert not torch.equal(param, initial[name]), name
        torch.testing.assert_close(param, loop[name], atol=1e-6, rtol=1e-6, msg=name)


def test_optimizer_runs_foreach_with_the_per_parameter_loops_arithmetic():
    trained, loop, optimizer = _train_five_steps(fused=False)
    assert all(group["foreach"] and not group["fused"] for group in optimizer.param_groups)
    for name, param in trained.items():
        assert torch.equal(param, loop[name]), name


def _small_net():
    """The same seeded 2-layer net on every call."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))
