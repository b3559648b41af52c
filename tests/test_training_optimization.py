"""AdamW and the schedule (`transformers_valor.training.optimization`)."""

from pathlib import Path

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
