"""transformers-valor: VALOR as a Hugging Face `transformers` model.

Importing the package registers the configurations, models and processors with the `transformers` Auto classes.
"""

from transformers import AutoConfig

from .configuration_valor import ValorConfig, ValorTextConfig, ValorVideoSwinConfig

AutoConfig.register("valor", ValorConfig)
AutoConfig.register("valor_text_model", ValorTextConfig)
AutoConfig.register("valor_video_swin", ValorVideoSwinConfig)

__all__ = ["ValorConfig", "ValorTextConfig", "ValorVideoSwinConfig"]
