"""Worker launched by tests/test_pretraining.py under `torchrun --nproc_per_node 2`.

Each process takes its half of a seeded global batch, runs ValorForPreTraining (MGA features all-gathered with
gradients, MGC normalised by the global label count), averages gradients as DDP does and rank 0 saves the
averaged loss and gradients for comparison with a single-process run.
"""

import sys

import torch
import torch.distributed as dist

from helpers import ValorInputsTester, tiny_valor_config
from transformers_valor import ValorForPreTraining
from transformers_valor.data.masking import CaptionMaskingConfig, mask_captions


def global_batch(model):
    inputs = ValorInputsTester(batch_size=4, seed=3).prepare_inputs()
    config = CaptionMaskingConfig.from_model_config(model.config.text_config)
    inputs["caption_input_ids"], inputs["labels"] = mask_captions(
        inputs["input_ids"], config, torch.Generator().manual_seed(0)
    )
    return inputs


def build_model():
    torch.manual_seed(0)
    return ValorForPreTraining(tiny_valor_config()).train()


def main(output_path):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = build_model()
    inputs = global_batch(model)
    local = {k: v.chunk(world)[rank] for k, v in inputs.items()}
    out = model(**local)
    out.loss.backward()
    loss = out.loss.detach().clone()
    dist.all_reduce(loss)
    grads = {}
    for name, param in model.named_parameters():
        if param.grad is not None:
            grad = param.grad.clone()
            dist.all_reduce(grad)
            grads[name] = grad / world
    if rank == 0:
        torch.save({"loss": loss / world, "grads": grads}, output_path)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
