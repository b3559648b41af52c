"""VALOR's AST-style audio encoder: a plain ViT over Kaldi fbank clips, run on every clip of a sample.

The weights and maths are those of `transformers.ViTModel` (one input channel, one CLS token, no pooler), so
parameter names stay ViT's; what this class adds is the audio-shaped interface: `input_features` of shape
`(batch, clips, mel_bins, time_frames)` in, one grid of tokens per clip out.
"""

from dataclasses import dataclass

import torch
from transformers import ViTModel
from transformers.utils import ModelOutput

from .configuration_valor import ValorAudioConfig
from .modeling_attention import check_attention_weights_available


@dataclass
class ValorAudioModelOutput(ModelOutput):
    """
    Output of [`ValorAudioModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, clips, 1 + patches, hidden_size)`): the
            final LayerNorm's output for every token of every clip.
        pooler_output (`torch.FloatTensor` of shape `(batch_size, clips, hidden_size)`): each clip's CLS token
            (VALOR's per-clip feature).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): the embeddings and every layer's output, each
            `(batch_size, clips, 1 + patches, hidden_size)`, with `output_hidden_states=True`.
        attentions (`tuple(torch.FloatTensor)`, *optional*): every layer's attention weights, each
            `(batch_size, clips, heads, tokens, tokens)`, with `output_attentions=True` (eager attention).
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class ValorAudioModel(ViTModel):
    """
    The audio tower of VALOR: a ViT (AST-style, 16 x 16 patches over 64 mel x 512 frame clips) applied to each
    audio clip independently.

    Example:

    ```python
    >>> import torch
    >>> from transformers_valor import ValorAudioConfig, ValorAudioModel
    >>> config = ValorAudioConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...                           intermediate_size=37, image_size=[16, 32], patch_size=8)
    >>> out = ValorAudioModel(config)(torch.randn(2, 3, 16, 32))
    >>> out.last_hidden_state.shape, out.pooler_output.shape
    (torch.Size([2, 3, 9, 32]), torch.Size([2, 3, 32]))
    ```
    """

    config: ValorAudioConfig
    main_input_name = "input_features"
    input_modalities = ("audio",)

    def __init__(self, config: ValorAudioConfig):
        super().__init__(config, add_pooling_layer=False)

    def forward(
        self,
        input_features: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ValorAudioModelOutput | tuple:
        r"""
        Args:
            input_features (`torch.FloatTensor` of shape `(batch_size, clips, mel_bins, time_frames)`): normalised
                fbank clips, as `ValorFeatureExtractor` returns them.
            output_hidden_states / output_attentions (`bool`, *optional*): also return every layer's output /
                attention weights. Default: the config's.
            return_dict (`bool`, *optional*): a [`ValorAudioModelOutput`] instead of a tuple.
        """
        if input_features is None or input_features.dim() != 4:
            shape = None if input_features is None else tuple(input_features.shape)
            raise ValueError(
                f"`input_features` must have shape (batch, audio_clips, mel_bins, time_frames), got {shape}."
            )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if output_attentions if output_attentions is not None else self.config.output_attentions:
            check_attention_weights_available({"audio": self.config})
        batch, clips = input_features.shape[:2]
        output = super().forward(
            pixel_values=input_features.flatten(0, 1)[:, None],  # (B * clips, 1, mel, time)
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
            **kwargs,
        )

        def per_clip(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.view(batch, clips, *tensor.shape[1:])

        tokens = per_clip(output.last_hidden_state)  # (B, clips, 1 + patches, C)
        result = ValorAudioModelOutput(
            last_hidden_state=tokens,
            pooler_output=tokens[:, :, 0],
            hidden_states=tuple(per_clip(h) for h in output.hidden_states) if output.hidden_states else None,
            attentions=tuple(per_clip(a) for a in output.attentions) if output.attentions else None,
        )
        return result if return_dict else result.to_tuple()
