"""Every two-process check of the training code in ONE launch (process start-up dominates their cost).

Launched by the `ddp_runs` fixture (tests/conftest.py) as
`torchrun --standalone --nproc_per_node 2 distributed_training_worker.py WORKDIR`; the fixture has written
`WORKDIR/{pretrain,retrieval,captioning}.yaml`. In order, on one gloo process group:

1. gradients: each process takes its half of a seeded global batch and runs `PretrainingObjective` (MGA
   features all-gathered with gradients, MGC and conditioned MLM normalised by the global label count); gradients
   are averaged as DDP
   does and rank 0 saves the loss and gradients to `WORKDIR/gradients.pt` (compared with one process on the
   global batch by tests/test_training_objectives.py);
2. `examples/pretrain.py --config WORKDIR/pretrain.yaml`;
3. `examples/finetune_retrieval.py --config WORKDIR/retrieval.yaml` (trains, then both processes evaluate, each
   on its half of the test set, `training.corpus_split`);
   then `examples/caption_videos.py` (`WORKDIR/caption_args.json`: a random tiny captioner over a file list,
   each process captioning its share into shards, the main process merging them into `captions.jsonl`), and
   `examples/encode_videos.py` (`WORKDIR/encode_args.json`: the same model and list into a gallery, each
   process encoding its share, the main process committing the shards and building the indexes);
4. FSDP2 under the environment `accelerate launch --config_file examples/configs/accelerate/fsdp_2nodes.yaml`
   gives the script (1 machine, 2 processes, fp32), which the loop shards itself on the CPU: `fsdp.yaml` (the
   pretraining run of step 2 sharded), `fsdp_resumed.yaml` (the same, stopped after 2 steps and resumed from its
   sharded checkpoint) and `fsdp_retrieval.yaml` (retrieval of step 3, whose objective calls the feature methods);
5. the same config as shipped (bf16): one sharded step of the pretraining objective, the dtypes written to
   `WORKDIR/fsdp_bf16.json`;
6. streaming: `stream.yaml` (pretraining on WebDataset shards, each process reading its shards) and
   `stream_resumed.yaml` (stopped after 2 steps, resumed);
7. `examples/finetune_captioning.py --config WORKDIR/captioning.yaml` (SCST, then both processes evaluate).

The scripts run in this process (`runpy`); the process group is torn down by the last one only (the earlier
ones would otherwise end it for the next), and Accelerate's singletons are reset between runs.
"""

import json
import os
import runpy
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator, PartialState

from helpers import TINY_TASK_PROMPT_IDS, ValorInputsTester, tiny_valor_config
from training_helpers import ONE_MACHINE_TWO_PROCESSES, REPO, accelerate_config_env, reset_accelerate
from transformers_valor import ValorForPreTraining
from transformers_valor.data.masking import MLM_MASK_PROBABILITY, CaptionMaskingConfig, mask_captions
from transformers_valor.modeling_valor_text import ValorTextLayer
from transformers_valor.training import PretrainingObjective
from transformers_valor.training.distributed import resolve_engine, shard_objective

FSDP_CONFIG = REPO / "examples" / "configs" / "accelerate" / "fsdp_2nodes.yaml"


def global_batch(model) -> dict:
    """A seeded batch of 4 samples (each of 2 processes takes 2), masked for MGC and for conditioned MLM."""
    inputs = ValorInputsTester(batch_size=4, seed=3).prepare_inputs()
    config = CaptionMaskingConfig.from_model_config(model.config.text_config)
    inputs["caption_input_ids"], inputs["labels"] = mask_captions(
        inputs["input_ids"], config, torch.Generator().manual_seed(0)
    )
    mlm = CaptionMaskingConfig.from_model_config(
        model.config.text_config, mask_probability=MLM_MASK_PROBABILITY
    )
    inputs["mlm_input_ids"], inputs["mlm_labels"] = mask_captions(
        inputs["input_ids"], mlm, torch.Generator().manual_seed(1)
    )
    return inputs


def build_model() -> ValorForPreTraining:
    """The seeded tiny pretraining model both sides of the gradient comparison start from."""
    torch.manual_seed(0)
    return ValorForPreTraining(tiny_valor_config(task_prompt_ids=TINY_TASK_PROMPT_IDS)).train()


def gradients_on_half_batches(output_path: Path) -> None:
    """Step 1: the DDP-averaged loss and gradients of the pretraining objective, saved by rank 0."""
    rank, world = dist.get_rank(), dist.get_world_size()
    objective = PretrainingObjective(build_model())
    local = {k: v.chunk(world)[rank] for k, v in global_batch(objective.model).items()}
    out = objective(local)
    out.loss.backward()
    loss = out.loss.detach().clone()
    dist.all_reduce(loss)
    grads = {}
    for name, param in objective.model.named_parameters():
        if param.grad is not None:
            grad = param.grad.clone()
            dist.all_reduce(grad)
            grads[name] = grad / world
    if rank == 0:
        torch.save({"loss": loss / world, "grads": grads}, output_path)


def run_script(name: str, config: Path, last: bool, extra: tuple[str, ...] = ()) -> None:
    """Run `examples/<name>` as `__main__` with `--config config` and the `extra` arguments."""
    run_example(name, ("--config", str(config), *extra), last)


def run_example(name: str, arguments: tuple[str, ...], last: bool) -> None:
    """Run `examples/<name>` as `__main__` with `arguments`."""
    destroy = PartialState.destroy_process_group
    if not last:
        # `train` ends with `Accelerator.end_training`, which destroys the process group; keep it for the next run
        # (a new group on the same rendezvous store does not connect reliably).
        PartialState.destroy_process_group = lambda self, group=None: None
    sys.argv = [name, *arguments]
    try:
        runpy.run_path(str(REPO / "examples" / name), run_name="__main__")
    finally:
        PartialState.destroy_process_group = destroy
        reset_accelerate()


@contextmanager
def launched_with(env: dict[str, str]):
    """The process environment of an `accelerate launch` with a config file, for the block."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def fsdp_runs(workdir: Path) -> None:
    """Step 4: the FSDP2 runs (the shipped config in fp32, as a CPU user would override `mixed_precision`)."""
    with launched_with(
        accelerate_config_env(FSDP_CONFIG, *ONE_MACHINE_TWO_PROCESSES, "--mixed_precision", "no")
    ):
        run_script("pretrain.py", workdir / "fsdp.yaml", last=False)
        run_script(
            "pretrain.py", workdir / "fsdp_resumed.yaml", last=False, extra=("--stop_after_steps", "2")
        )
        resume = ("--resume_from_checkpoint", "latest")
        run_script("pretrain.py", workdir / "fsdp_resumed.yaml", last=False, extra=resume)
        run_script(
            "finetune_retrieval.py", workdir / "fsdp_retrieval.yaml", last=False, extra=("--skip_eval",)
        )


def fsdp_mixed_precision(output_path: Path) -> None:
    """Step 5: one sharded step under the shipped config's bf16; the compute and parameter dtypes, rank 0."""
    with launched_with(accelerate_config_env(FSDP_CONFIG, *ONE_MACHINE_TWO_PROCESSES)):
        accelerator = Accelerator(cpu=True)
        engine = resolve_engine(accelerator)
        objective = shard_objective(accelerator, engine, PretrainingObjective(build_model()))
        seen = {}
        layer = next(
            m for m in objective.modules() if isinstance(m, ValorTextLayer)
        )  # fully_shard subclasses it

        def record_output_dtype(
            module, args, out
        ) -> None:  # a hook returning a value would replace the output
            seen.setdefault("layer_output", str((out[0] if isinstance(out, tuple) else out).dtype))

        layer.register_forward_hook(record_output_dtype)
        rank, world = dist.get_rank(), dist.get_world_size()
        local = {k: v.chunk(world)[rank] for k, v in global_batch(objective.model).items()}
        out = objective(local)
        out.loss.backward()
        facts = {
            "mixed_precision": accelerator.mixed_precision,
            "engine": engine.describe(),
            "layer_output": seen["layer_output"],
            "sharded_parameter": str(objective.model.valor.temperature.dtype),
            "gradient": str(objective.model.valor.text_projection.weight.grad.dtype),
            "loss_finite": bool(torch.isfinite(out.loss).item()),
        }
    reset_accelerate()
    if rank == 0:
        output_path.write_text(json.dumps(facts))


def streaming_runs(workdir: Path) -> None:
    """Step 6: pretraining streamed from shards, uninterrupted and stopped / resumed."""
    run_script("pretrain.py", workdir / "stream.yaml", last=False)
    run_script("pretrain.py", workdir / "stream_resumed.yaml", last=False, extra=("--stop_after_steps", "2"))
    run_script(
        "pretrain.py",
        workdir / "stream_resumed.yaml",
        last=False,
        extra=("--resume_from_checkpoint", "latest"),
    )


def caption_videos(workdir: Path) -> None:
    """Step 3b: `examples/caption_videos.py` with `WORKDIR/captioner` (a random tiny captioner) over
    `WORKDIR/caption_list.txt` (the test clips and a damaged file), each process captioning every second item, into
    `WORKDIR/captions`."""
    arguments = [
        f"--{key}={value}" for key, value in json.loads((workdir / "caption_args.json").read_text()).items()
    ]
    run_example("caption_videos.py", (*arguments, "--no_progress"), last=False)


def encode_videos(workdir: Path) -> None:
    """Step 3c: `examples/encode_videos.py` with the same captioner's encoders over the same list, each process
    encoding every second item into `WORKDIR/gallery`; rank 0 commits the shards and builds the indexes."""
    arguments = [
        f"--{key}={value}" for key, value in json.loads((workdir / "encode_args.json").read_text()).items()
    ]
    run_example("encode_videos.py", (*arguments, "--no_progress"), last=False)


def main(workdir: Path) -> None:
    """The checks, in order."""
    dist.init_process_group("gloo")
    gradients_on_half_batches(workdir / "gradients.pt")
    run_script("pretrain.py", workdir / "pretrain.yaml", last=False)
    run_script("finetune_retrieval.py", workdir / "retrieval.yaml", last=False)
    caption_videos(workdir)
    encode_videos(workdir)
    fsdp_runs(workdir)
    fsdp_mixed_precision(workdir / "fsdp_bf16.json")
    streaming_runs(workdir)
    run_script("finetune_captioning.py", workdir / "captioning.yaml", last=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
