"""Every two-process check of the training code in ONE launch (process start-up dominates their cost).

Launched by the `ddp_runs` fixture (tests/conftest.py) as
`torchrun --standalone --nproc_per_node 2 distributed_training_worker.py WORKDIR`; the fixture has written
`WORKDIR/{pretrain,retrieval,captioning}.yaml`. In order, on one gloo process group:

1. gradients: each process takes its half of a seeded global batch and runs `PretrainingObjective` (MGA
   features all-gathered with gradients, MGC normalised by the global label count); gradients are averaged as DDP
   does and rank 0 saves the loss and gradients to `WORKDIR/gradients.pt` (compared with one process on the
   global batch by tests/test_training_objectives.py);
2. `examples/pretrain.py --config WORKDIR/pretrain.yaml`;
3. `examples/finetune_retrieval.py --config WORKDIR/retrieval.yaml` (trains, then rank 0 evaluates);
4. `examples/finetune_captioning.py --config WORKDIR/captioning.yaml` (SCST, then rank 0 evaluates).

The scripts run in this process (`runpy`); the process group is torn down by the last one only (the earlier
ones would otherwise end it for the next), and Accelerate's singletons are reset between runs. The main process
evaluates after training while the other one starts the next run (it waits at that run's first collective).
"""

import runpy
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import PartialState

from helpers import ValorInputsTester, tiny_valor_config
from training_helpers import REPO, reset_accelerate
from transformers_valor import ValorForPreTraining
from transformers_valor.data.masking import CaptionMaskingConfig, mask_captions
from transformers_valor.training import PretrainingObjective


def global_batch(model) -> dict:
    """A seeded, masked batch of 4 samples (each of 2 processes takes 2)."""
    inputs = ValorInputsTester(batch_size=4, seed=3).prepare_inputs()
    config = CaptionMaskingConfig.from_model_config(model.config.text_config)
    inputs["caption_input_ids"], inputs["labels"] = mask_captions(
        inputs["input_ids"], config, torch.Generator().manual_seed(0)
    )
    return inputs


def build_model() -> ValorForPreTraining:
    """The seeded tiny pretraining model both sides of the gradient comparison start from."""
    torch.manual_seed(0)
    return ValorForPreTraining(tiny_valor_config()).train()


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


def run_script(name: str, config: Path, last: bool) -> None:
    """Run `examples/<name>` as `__main__` with `--config config`."""
    destroy = PartialState.destroy_process_group
    if not last:
        # `train` ends with `Accelerator.end_training`, which destroys the process group; keep it for the next run
        # (a new group on the same rendezvous store does not connect reliably).
        PartialState.destroy_process_group = lambda self, group=None: None
    sys.argv = [name, "--config", str(config)]
    try:
        runpy.run_path(str(REPO / "examples" / name), run_name="__main__")
    finally:
        PartialState.destroy_process_group = destroy
        reset_accelerate()


def main(workdir: Path) -> None:
    """The four checks, in order."""
    dist.init_process_group("gloo")
    gradients_on_half_batches(workdir / "gradients.pt")
    run_script("pretrain.py", workdir / "pretrain.yaml", last=False)
    run_script("finetune_retrieval.py", workdir / "retrieval.yaml", last=False)
    run_script("finetune_captioning.py", workdir / "captioning.yaml", last=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
