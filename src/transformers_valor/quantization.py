"""Int8 dynamic quantization of a VALOR model for CPU inference (`torch.ao.quantization.quantize_dynamic`).

Every `nn.Linear` of the text encoder / decoder and of the MLM head gets int8 weights (activations are quantised
per batch at run time): a cached decoding step reads a quarter of the weight bytes. Measured on the 2-core CPU
(`benchmarks/bench_captioning.py`, `benchmarks/results/cpu_captioning.txt`): 2.6x faster per token at batch 1 and
1.9x more videos/s at batch 8, with captions that differ from fp32 ones (token agreement 0.75 on random weights),
so it is an option, never a default. Inference only (the quantised layers have no gradients) and CPU only.
"""

import warnings

import torch
from torch import nn

from .compilation import text_decoding_parts_for_cpu_inference


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """
    Replace the linear layers of `model`'s text tower and MLM head by int8 dynamically quantised ones, in place.

    Args:
        model: a `ValorModel` or VALOR head on the CPU, in eval mode.

    Returns:
        `model` itself.

    Raises:
        ValueError: the model is in training mode or not on the CPU.
    """
    targets = text_decoding_parts_for_cpu_inference(model, "quantize_dynamic_int8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices (its move to torchao)
        for module in targets:
            torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return model
