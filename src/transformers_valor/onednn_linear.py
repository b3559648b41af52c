"""oneDNN kernels for the text decoder's linear layers in CPU inference.

A cached decoding step multiplies two rows per sequence (the last token and the [MASK] slot VALOR reads the
prediction from) by every weight matrix of the decoder: it streams the weights, so the kernel's read rate sets the
speed. PyTorch's `F.linear` goes to MKL, which on the AMD EPYC this project is measured on reads at 8-11 GB/s for
one row and 4-7 GB/s for two; oneDNN's kernel (the one inductor uses for CPU inference,
`torch.ops.mkldnn._linear_pointwise`) reads at 12-16 GB/s for one row and 6-9 GB/s for two, 8.5-14 GB/s when the
weight is laid out in its blocked format for two rows (`benchmarks/results/cpu_captioning.txt`).
[`use_onednn_linear`] routes the text tower's and the MLM head's `nn.Linear` layers through it, keeping their
parameters: names, tied weights, `state_dict` and `save_pretrained` do not change, and the results are the same
function up to float rounding. Inference only (the kernel has no backward) and CPU only. Measured on the VALOR-B
decoder (`benchmarks/bench_captioning.py`, two runs, the same captions): plain weights 1.14-1.46x per token at
batch 1 and 1.23-1.33x videos/s at batch 8; with `pack_for_rows=2` 1.42-1.81x per token (61 ms, 47 % of the
weight-streaming bound) and 1.21-1.42x videos/s at batch 8. On tiny models the
kernel's call overhead makes it slower, so it is an option, not a default. On an Intel Xeon (AVX-512, AMX) the
order turns: `F.linear` reads the step's products at 23.8 GB/s, oneDNN at 16.5 (19.8 packed), and eager decoding
is the fastest per token at batch 1 (32.5 ms against 46.0 ms with this option, 40.3 ms packed; same benchmark),
while at batch 8 the option still gives 1.11x videos/s (1.17x packed): measure on your CPU before turning it on.
"""

import torch
from torch import nn

from .compilation import COMPILED_HEAD, text_decoding_parts_for_cpu_inference
from .modeling_valor_text import ValorTextSelfAttention


class OneDNNLinear(nn.Linear):
    """
    An `nn.Linear` whose forward is oneDNN's fused linear kernel; it shares the parameters it was built from.

    With `pack_for_rows`, the kernel reads a copy of the weight in oneDNN's blocked layout for products of that
    many rows (`torch.ops.mkldnn._reorder_linear_weight`, what inductor's freezing does): a second copy of the
    weight in memory, kept out of the `state_dict` and rebuilt whenever the weight changes (in-place updates,
    `load_state_dict`, `.to()`).
    """

    @classmethod
    def from_linear(cls, linear: nn.Linear, pack_for_rows: int | None = None) -> "OneDNNLinear":
        """A layer computing `linear` with the same `weight` and `bias` parameter objects (ties are kept),
        reading a blocked copy of the weight laid out for `pack_for_rows` rows when that is given."""
        if pack_for_rows is not None and pack_for_rows < 1:
            raise ValueError(f"`pack_for_rows` must be a positive number of rows, got {pack_for_rows}.")
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features = linear.in_features, linear.out_features
        layer.weight, layer.bias = linear.weight, linear.bias
        layer.pack_for_rows = pack_for_rows
        layer._packed, layer._packed_of = None, None
        return layer

    def kernel_weight(self) -> torch.Tensor:
        """The weight as the kernel reads it: `weight` itself, or its blocked copy, packed again when `weight`
        was replaced or modified since the last call."""
        if self.pack_for_rows is None:
            return self.weight
        weight = self.weight
        source = (weight.data_ptr(), weight._version, weight.dtype)
        if self._packed_of != source:
            self._packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), self.pack_for_rows)
            self._packed_of = source
        return self._packed

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`hidden_states @ weight.T + bias` on the CPU; refuses inputs that need gradients."""
        if torch.is_grad_enabled() and (hidden_states.requires_grad or self.weight.requires_grad):
            raise RuntimeError(
                "OneDNNLinear is for inference (its kernel has no backward): run under `torch.no_grad()` or "
                "`torch.inference_mode()`, or restore the model with `from_pretrained` to train."
            )
        return torch.ops.mkldnn._linear_pointwise(
            hidden_states, self.kernel_weight(), self.bias, "none", [], ""
        )


def use_onednn_linear(model: nn.Module, pack_for_rows: int | None = None) -> nn.Module:
    """
    Replace every `nn.Linear` of `model`'s text tower (encoder / decoder with its cross-attention) and MLM head by
    a [`OneDNNLinear`] holding the same parameters, in place.

    Args:
        model: a `ValorModel` or VALOR head on the CPU, in eval mode, float32 or bfloat16.
        pack_for_rows (`int`, *optional*): lay the text tower's weights out in oneDNN's blocked format for
            products of this many rows, which reads them faster: a cached decoding step multiplies 2 rows per
            sequence (the last token and the [MASK] slot the prediction is read from), so 2 for one greedy
            caption at a time, `2 * batch * beams` in general. Costs a second copy of the tower's weights in
            memory (~400 MB for VALOR-B); the MLM head (one row per sequence, the tied word embedding) and the
            cross-attention keys and values (computed once per caption from the media tokens) are not
            packed. Measured on VALOR-B's decoder: see the module docstring.

    Returns:
        `model` itself.

    Raises:
        ValueError: the model is in training mode or not on the CPU, or `pack_for_rows` is below 1.
        RuntimeError: this PyTorch build has no oneDNN (`torch.backends.mkldnn.is_available()` is false).
    """
    parts = text_decoding_parts_for_cpu_inference(model, "use_onednn_linear")
    if not torch.backends.mkldnn.is_available():
        raise RuntimeError(
            "This PyTorch build has no oneDNN (torch.backends.mkldnn.is_available() is False)."
        )
    for part in parts:
        part_rows = (
            None if part is getattr(model, COMPILED_HEAD, None) else pack_for_rows
        )  # the MLM head: 1 row
        for parent in part.modules():
            for child_name, child in parent.named_children():
                if type(child) is nn.Linear:
                    rows = None if _is_cross_key_or_value(parent, child_name) else part_rows
                    setattr(parent, child_name, OneDNNLinear.from_linear(child, rows))
    return model


def _is_cross_key_or_value(parent: nn.Module, child_name: str) -> bool:
    """Whether a text-tower layer is a cross-attention key or value projection, which runs once per caption on
    the media tokens rather than on every decoding step's rows."""
    return isinstance(parent, ValorTextSelfAttention) and parent.is_cross_attention and child_name != "query"


__all__ = ["OneDNNLinear", "use_onednn_linear"]
