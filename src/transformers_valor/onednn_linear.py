"""oneDNN matrix-vector kernels for the text decoder's linear layers in CPU inference.

A cached decoding step multiplies one token per sequence by every weight matrix of the decoder: it streams the
weights, so the GEMV kernel's read rate sets the speed. PyTorch's `F.linear` goes to MKL, whose fp32 GEMV reads
at 8-11 GB/s on the AMD EPYC this project is measured on, where oneDNN's kernel (the one inductor uses for CPU
inference, `torch.ops.mkldnn._linear_pointwise`) reads at 14-16 GB/s (`benchmarks/results/cpu_captioning.txt`).
[`use_onednn_linear`] routes the text tower's and the MLM head's `nn.Linear` layers through it, keeping their
parameters: names, tied weights, `state_dict` and `save_pretrained` do not change, and the results are the same
function up to float rounding. Inference only (the kernel has no backward) and CPU only. Measured on the VALOR-B
decoder (`benchmarks/bench_captioning.py`): 1.19x per token at batch 1 and 1.25x videos/s at batch 8, the same
captions; on tiny models the kernel's call overhead makes it slower, so it is an option, not a default.
"""

import torch
from torch import nn

from .compilation import text_decoding_parts_for_cpu_inference


class OneDNNLinear(nn.Linear):
    """An `nn.Linear` whose forward is oneDNN's fused linear kernel; it shares the parameters it was built from."""

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "OneDNNLinear":
        """A layer computing `linear` with the same `weight` and `bias` parameter objects (ties are kept)."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features = linear.in_features, linear.out_features
        layer.weight, layer.bias = linear.weight, linear.bias
        return layer

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`hidden_states @ weight.T + bias` on the CPU; refuses inputs that need gradients."""
        if torch.is_grad_enabled() and (hidden_states.requires_grad or self.weight.requires_grad):
            raise RuntimeError(
                "OneDNNLinear is for inference (its kernel has no backward): run under `torch.no_grad()` or "
                "`torch.inference_mode()`, or restore the model with `from_pretrained` to train."
            )
        return torch.ops.mkldnn._linear_pointwise(hidden_states, self.weight, self.bias, "none", [], "")


def use_onednn_linear(model: nn.Module) -> nn.Module:
    """
    Replace every `nn.Linear` of `model`'s text tower (encoder / decoder with its cross-attention) and MLM head by
    a [`OneDNNLinear`] holding the same parameters, in place.

    Args:
        model: a `ValorModel` or VALOR head on the CPU, in eval mode, float32 or bfloat16.

    Returns:
        `model` itself.

    Raises:
        ValueError: the model is in training mode or not on the CPU.
        RuntimeError: this PyTorch build has no oneDNN (`torch.backends.mkldnn.is_available()` is false).
    """
    parts = text_decoding_parts_for_cpu_inference(model, "use_onednn_linear")
    if not torch.backends.mkldnn.is_available():
        raise RuntimeError(
            "This PyTorch build has no oneDNN (torch.backends.mkldnn.is_available() is False)."
        )
    for part in parts:
        for parent in part.modules():
            for child_name, child in parent.named_children():
                if type(child) is nn.Linear:
                    setattr(parent, child_name, OneDNNLinear.from_linear(child))
    return model


__all__ = ["OneDNNLinear", "use_onednn_linear"]
