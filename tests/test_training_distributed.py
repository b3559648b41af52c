"""The distributed engine of a run (`transformers_valor.training.distributed`): the check of what the accelerate
config asked for against what runs, and FSDP2 applied by the loop on the CPU (2 gloo processes, the shipped
`examples/configs/accelerate/fsdp_2nodes.yaml`), compared with DDP."""

import json
import re
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file

from training_helpers import ONE_MACHINE_TWO_PROCESSES, REPO, accelerate_config_env, read_metrics
from transformers_valor import (
    ValorForConditionalGeneration,
    ValorForPreTraining,
    ValorForRetrieval,
    ValorModel,
)
from transformers_valor.training.distributed import DistributedEngineError, requested_engine, resolve_engine

# The optimizer settings of the compared runs (tests/training_helpers.py `tiny_run`, tests/conftest.py `ddp_runs`).
LEARNING_RATE, MAX_STEPS = 1e-3, 3
CONFIGS = REPO / "examples" / "configs" / "accelerate"


def _accelerator(distributed_type, num_processes=2, mixed_precision="no"):
    """What `resolve_engine` reads of an Accelerator."""
    return SimpleNamespace(
        distributed_type=distributed_type,
        num_processes=num_processes,
        mixed_precision=mixed_precision,
        device=torch.device("cpu"),
    )


def test_the_shipped_configs_are_read_as_accelerate_launch_passes_them():
    fsdp = accelerate_config_env(CONFIGS / "fsdp_2nodes.yaml", *ONE_MACHINE_TWO_PROCESSES)
    assert requested_engine({**fsdp, "WORLD_SIZE": "2"}) == requested_engine(
        {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "WORLD_SIZE": "2"}
    )
    assert (
        fsdp["ACCELERATE_MIXED_PRECISION"] == "bf16"
        and fsdp["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    )
    # No class list: each layer class the model holds (the objective's `_no_split_modules`) is a unit.
    assert "FSDP_TRANSFORMER_CLS_TO_WRAP" not in fsdp
    assert requested_engine({"ACCELERATE_USE_DEEPSPEED": "true"}).engine == "deepspeed"
    assert requested_engine({}).engine == "default"


def test_fsdp2_on_the_cpu_is_applied_by_the_loop_with_the_configs_precision():
    env = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "WORLD_SIZE": "2"}
    engine = resolve_engine(_accelerator(DistributedType.MULTI_CPU, mixed_precision="bf16"), env)
    assert engine.loop_fsdp2 is not None and engine.describe().startswith("FSDP2 (fully_shard applied by the")
    assert engine.loop_fsdp2.mixed_precision_policy.param_dtype == torch.bfloat16
    # What Accelerate runs itself passes unchanged.
    assert resolve_engine(_accelerator(DistributedType.FSDP), env).loop_fsdp2 is None
    assert (
        resolve_engine(_accelerator(DistributedType.MULTI_CPU), {"WORLD_SIZE": "2"}).describe() == "MULTI_CPU"
    )


FSDP1 = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}
FSDP2 = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}
DEEPSPEED = {"ACCELERATE_USE_DEEPSPEED": "true"}


@pytest.mark.parametrize(
    "env, launched, actual, counted, message",
    [
        # An FSDP config on the CPU used to run DDP without a word.
        (FSDP1, 2, DistributedType.MULTI_CPU, 2, "set `fsdp_version: 2`"),
        (FSDP2, 1, DistributedType.NO, 1, "launch two or more"),
        (DEEPSPEED, 2, DistributedType.MULTI_CPU, 2, "DeepSpeed on accelerator devices only"),
        # DeepSpeed with `cpu=False` on a machine without GPU: Accelerate counts one process on every rank.
        (DEEPSPEED, 2, DistributedType.DEEPSPEED, 1, "every rank would act as the main process"),
    ],
)
def test_an_engine_that_does_not_run_as_asked_is_an_error(env, launched, actual, counted, message):
    with pytest.raises(DistributedEngineError, match=message):
        resolve_engine(_accelerator(actual, num_processes=counted), {**env, "WORLD_SIZE": str(launched)})


# ----------------------------------------------------------------------------------- 2 processes, one launch
def test_fsdp2_training_equals_ddp(ddp_runs):
    """The shipped FSDP config on 2 CPU processes: the same losses and updated weights as DDP (atol 1e-5)."""
    for sharded, replicated in (("fsdp", "pretrain"), ("fsdp_retrieval", "retrieval")):
        ours, theirs = read_metrics(ddp_runs / sharded), read_metrics(ddp_runs / replicated)
        assert [r["step"] for r in ours] == [r["step"] for r in theirs]
        for a, b in zip(ours, theirs):
            assert a.keys() == b.keys()
            assert all(abs(a[k] - b[k]) <= 1e-5 for k in a), (sharded, a, b)
        weights = load_file(ddp_runs / sharded / "final" / "model.safetensors")
        reference = load_file(ddp_runs / replicated / "final" / "model.safetensors")
        assert weights.keys() == reference.keys()
        for name, value in weights.items():
            # Softmax is shift-invariant, so these biases have an exactly zero gradient: what the two engines
            # compute for them is rounding noise of opposite sign, which Adam turns into steps of up to `lr`.
            zero_gradient = re.search(r"(k_proj|key)\.bias$|weight_mlp\.2\.bias$", name)
            atol = MAX_STEPS * LEARNING_RATE if zero_gradient else 1e-5
            torch.testing.assert_close(value, reference[name], atol=atol, rtol=0, msg=name)


def test_the_sharded_final_folder_loads_into_every_head(ddp_runs):
    final = ddp_runs / "fsdp" / "final"
    assert json.loads((final / "config.json").read_text())["architectures"] == ["ValorForPreTraining"]
    weights = load_file(final / "model.safetensors")
    for head in (ValorModel, ValorForRetrieval, ValorForConditionalGeneration, ValorForPreTraining):
        model = head.from_pretrained(final)
        valor = model if head is ValorModel else model.valor
        assert torch.equal(valor.temperature.detach(), weights["valor.temperature"]), head.__name__
    assert isinstance(
        ValorForRetrieval.from_pretrained(ddp_runs / "fsdp_retrieval" / "final"), ValorForRetrieval
    )


def test_mixed_precision_of_the_config_reaches_fsdp2(ddp_runs):
    """The shipped config says bf16: the layers compute in bf16, the sharded parameters and their gradients stay
    fp32 (FSDP2's MixedPrecisionPolicy casts per unit)."""
    facts = json.loads((ddp_runs / "fsdp_bf16.json").read_text())
    assert facts == {
        "mixed_precision": "bf16",
        "engine": "FSDP2 (fully_shard applied by the training loop; Accelerate runs FSDP on accelerators only)",
        "layer_output": "torch.bfloat16",
        "sharded_parameter": "torch.float32",
        "gradient": "torch.float32",
        "loss_finite": True,
    }


def test_the_sharded_checkpoint_resumes_exactly(ddp_runs):
    """`fsdp_resumed` stopped after 2 steps (each process wrote its shards of the weights and the optimizer) and
    was resumed from them: the same losses and final weights, bit for bit, as the uninterrupted FSDP2 run."""
    checkpoint = ddp_runs / "fsdp_resumed" / "checkpoints" / "checkpoint-2"
    shards = sorted(
        p.name for p in checkpoint.iterdir() if p.name.startswith(("model_shard", "optimizer_shard"))
    )
    assert shards == [
        "model_shard_0.safetensors",
        "model_shard_1.safetensors",
        "optimizer_shard_0.json",
        "optimizer_shard_0.safetensors",
        "optimizer_shard_1.json",
        "optimizer_shard_1.safetensors",
    ]
    # Each process holds half of a sharded weight: the shards are not whole copies.
    halves = [load_file(checkpoint / f"model_shard_{rank}.safetensors") for rank in (0, 1)]
    whole = load_file(ddp_runs / "fsdp" / "final" / "model.safetensors")
    embedding = "model.valor.text_model.embeddings.word_embeddings.weight"
    assert halves[0][embedding].shape[0] + halves[1][embedding].shape[0] == whole[embedding[6:]].shape[0]
    assert read_metrics(ddp_runs / "fsdp_resumed") == read_metrics(ddp_runs / "fsdp")
    resumed = load_file(ddp_runs / "fsdp_resumed" / "final" / "model.safetensors")
    assert resumed.keys() == whole.keys()
    for name, value in resumed.items():
        assert torch.equal(value, whole[name]), name
