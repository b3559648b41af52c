"""transformers-valor: VALOR as a Hugging Face `transformers` model.

Importing the package registers the configurations, models and processors with the `transformers` Auto classes.
"""

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForMultimodalLM,
    AutoModelForPreTraining,
    AutoProcessor,
)
from transformers.models.auto.video_processing_auto import AutoVideoProcessor

from .compilation import compile_valor
from .configuration_valor import (
    MODALITY_GROUPS,
    ModalityGroup,
    ValorAudioConfig,
    ValorConfig,
    ValorTextConfig,
    ValorVideoSwinConfig,
    get_modality_group,
)
from .conversion import init_from_encoders
from .feature_extraction_valor import ValorFeatureExtractor
from .generation_valor import valor_beam_search, valor_generation_config
from .losses import (
    CaptionLoss,
    MultimodalGroupingAlignmentLoss,
    QuestionAnsweringLoss,
    coarse_similarity,
    contrastive_loss,
    fine_grained_similarity,
    gather_with_grad,
)
from .modelcard import create_model_card
from .modeling_valor import (
    ValorCaptioningOutput,
    ValorFeatures,
    ValorForConditionalGeneration,
    ValorForPreTraining,
    ValorForRetrieval,
    ValorModel,
    ValorModelOutput,
    ValorPreTrainedModel,
    ValorPreTrainingOutput,
    ValorRetrievalOutput,
    concat_feature_batches,
)
from .modeling_valor_audio import ValorAudioModel, ValorAudioModelOutput
from .modeling_valor_text import ValorTextModel, ValorTextModelOutput, ValorTextPreTrainedModel
from .modeling_video_swin import ValorVideoSwinModel, ValorVideoSwinPreTrainedModel
from .pipelines import register_pipelines
from .processing_valor import ValorProcessor
from .tokenization_valor import clean_caption
from .video_processing_valor import ValorVideoProcessor

AutoConfig.register("valor", ValorConfig)
AutoConfig.register("valor_text_model", ValorTextConfig)
AutoConfig.register("valor_video_swin", ValorVideoSwinConfig)
AutoConfig.register("valor_audio", ValorAudioConfig)
AutoModel.register(ValorVideoSwinConfig, ValorVideoSwinModel)
AutoModel.register(ValorTextConfig, ValorTextModel)
AutoModel.register(ValorAudioConfig, ValorAudioModel)
AutoModel.register(ValorConfig, ValorModel)
AutoModelForPreTraining.register(ValorConfig, ValorForPreTraining)
# transformers has no AutoModelForRetrieval; ValorForRetrieval is imported directly.
AutoModelForMultimodalLM.register(ValorConfig, ValorForConditionalGeneration)
AutoFeatureExtractor.register(ValorConfig, ValorFeatureExtractor)
# The real AutoVideoProcessor: `transformers.AutoVideoProcessor` is a dummy without torchvision.
AutoVideoProcessor.register(ValorConfig, ValorVideoProcessor)
AutoProcessor.register(ValorConfig, ValorProcessor)
register_pipelines()
# Saved VALOR folders get a model card; the models themselves do not import the card code.
ValorPreTrainedModel.model_card_writer = staticmethod(create_model_card)

__all__ = [
    "compile_valor",
    "ValorModel",
    "ValorPreTrainedModel",
    "ValorForRetrieval",
    "ValorForConditionalGeneration",
    "ValorForPreTraining",
    "ValorFeatures",
    "ValorModelOutput",
    "ValorRetrievalOutput",
    "ValorCaptioningOutput",
    "ValorPreTrainingOutput",
    "ValorTextModel",
    "ValorTextModelOutput",
    "ValorTextPreTrainedModel",
    "fine_grained_similarity",
    "coarse_similarity",
    "contrastive_loss",
    "gather_with_grad",
    "MultimodalGroupingAlignmentLoss",
    "CaptionLoss",
    "QuestionAnsweringLoss",
    "valor_beam_search",
    "valor_generation_config",
    "concat_feature_batches",
    "ValorAudioConfig",
    "ValorAudioModel",
    "ValorAudioModelOutput",
    "MODALITY_GROUPS",
    "ModalityGroup",
    "get_modality_group",
    "init_from_encoders",
    "create_model_card",
    "ValorConfig",
    "ValorTextConfig",
    "ValorVideoSwinConfig",
    "ValorVideoSwinModel",
    "ValorVideoSwinPreTrainedModel",
    "ValorFeatureExtractor",
    "ValorVideoProcessor",
    "ValorProcessor",
    "clean_caption",
]
