"""`torch.compile` for the VALOR models: the three towers, the shared text encoder / decoder and the MLM head,
each compiled in place.

Each part is compiled on its own with `nn.Module.compile`, so the parameter names, `state_dict`, checkpoints,
`save_pretrained`, DDP / FSDP wrapping and `generate()` are the same as for the eager model; only the parts'
`forward` calls run the compiled code. Every tower's and head's forward traces as one graph (`fullgraph=True`, see
`tests/test_compilation.py`): the checks that read tensor values on the host (token ids in range, labels that are
VALOR's masking, non-finite inputs) are skipped while compiling, so run a batch eagerly first when the inputs are
in doubt.
"""

from typing import Any

from torch import nn

from .modeling_valor import ValorModel

# The parts of a `ValorModel` that are compiled, and the MLM head of the text-decoding heads.
COMPILED_TOWERS = ("vision_model", "audio_model", "text_model")
COMPILED_HEAD = "cls"


def compiled_parts(model: nn.Module) -> dict[str, nn.Module]:
    """
    The modules [`compile_valor`] compiles, by their name in `model`: the towers of the `ValorModel` that is
    `model` or its `valor` attribute, and the MLM head `cls` when `model` has one.

    Raises:
        TypeError: `model` is neither a `ValorModel` nor a model holding one as `valor`.
    """
    if isinstance(model, ValorModel):
        valor, prefix = model, ""
    elif isinstance(getattr(model, "valor", None), ValorModel):
        valor, prefix = model.valor, "valor."
    else:
        raise TypeError(
            f"compile_valor takes a ValorModel or a VALOR head (ValorForRetrieval, ValorForConditionalGeneration, "
            f"ValorForPreTraining), got {type(model).__name__}."
        )
    parts = {f"{prefix}{name}": getattr(valor, name) for name in COMPILED_TOWERS}
    head = getattr(model, COMPILED_HEAD, None)
    if isinstance(head, nn.Module):
        parts[COMPILED_HEAD] = head
    return parts


def text_decoding_parts_for_cpu_inference(model: nn.Module, caller: str) -> list[nn.Module]:
    """
    The text tower and the MLM head of `model` (the parts a cached decoding step runs), after checking that
    `model` is set up for CPU inference; `caller` names the option in the errors.

    Raises:
        ValueError: the model is in training mode or not on the CPU.
    """
    if model.training:
        raise ValueError(f"{caller} is for inference: call `model.eval()` first.")
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"{caller} runs on the CPU; the model is on {device}.")
    return [part for name, part in compiled_parts(model).items() if name.endswith(("text_model", "cls"))]


def compile_valor(model: nn.Module, **compile_kwargs: Any) -> nn.Module:
    """
    Compile a VALOR model's towers, text encoder / decoder and MLM head in place with `torch.compile`
    (`nn.Module.compile`), for training or inference.

    Example:

    ```python
    >>> from transformers_valor import ValorForConditionalGeneration, compile_valor
    >>> model = compile_valor(ValorForConditionalGeneration.from_pretrained("path/to/valor").eval())
    >>> captions = model.generate(pixel_values_videos=videos, input_features=audio)  # doctest: +SKIP
    ```

    The first calls compile (seconds to minutes); later calls with the same shapes and the same modalities
    reuse the code. `generate()` runs the compiled decoder once per step (its cache layout stays dynamic).

    Args:
        model: a `ValorModel` or a VALOR head (anything whose `valor` attribute is a `ValorModel`).
        compile_kwargs: passed to `torch.compile` (`mode`, `fullgraph`, `dynamic`, `backend`, `options`).

    Returns:
        `model` itself, its parts compiled.
    """
    for module in compiled_parts(model).values():
        module.compile(**compile_kwargs)
    return model


def is_compiled(module: nn.Module) -> bool:
    """Whether `module` was compiled in place by `nn.Module.compile` (what [`compile_valor`] does)."""
    return getattr(module, "_compiled_call_impl", None) is not None
