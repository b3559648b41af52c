"""VALOR pipelines for `transformers.pipeline`: audiovisual captioning, retrieval and question answering, and
zero-shot video, audio and audiovisual classification.

`register_pipelines()` (called when `transformers_valor` is imported) adds the tasks to transformers' pipeline
registry, so that `pipeline("audiovisual-captioning", model=...)` works for a saved folder or a hub id. The
`zero-shot-audio-classification` task is transformers' own: it is registered with a subclass of transformers'
pipeline that runs VALOR models VALOR's way and leaves every other model (CLAP) to transformers' code.
"""

import logging

from transformers import AutoModel
from transformers.pipelines import PIPELINE_REGISTRY

from ..modeling_valor import ValorForConditionalGeneration, ValorModel
from ..retrieval.gallery import VideoGallery
from .audiovisual_captioning import AudioVisualCaptioningPipeline
from .audiovisual_question_answering import AudioVisualQuestionAnsweringPipeline
from .audiovisual_retrieval import AudioVisualRetrievalPipeline
from .base import MODALITIES, PipelineInputError, PipelineInputNotFoundError
from .zero_shot_classification import (
    ZERO_SHOT_PIPELINES,
    ValorZeroShotAudioClassificationPipeline,
    ZeroShotAudioVisualClassificationPipeline,
    ZeroShotVideoClassificationPipeline,
)

# task name -> (pipeline class, model class loaded for a checkpoint name)
VALOR_PIPELINES: dict[str, tuple[type, type]] = {
    "audiovisual-captioning": (AudioVisualCaptioningPipeline, ValorForConditionalGeneration),
    "audiovisual-retrieval": (AudioVisualRetrievalPipeline, ValorModel),
    "audiovisual-question-answering": (AudioVisualQuestionAnsweringPipeline, ValorForConditionalGeneration),
}


def register_pipelines() -> None:
    """Register the VALOR tasks with `transformers.pipelines.PIPELINE_REGISTRY` (idempotent, process-local)."""
    tasks = {
        **VALOR_PIPELINES,
        # AutoModel: VALOR folders load their ValorModel, CLAP ones (zero-shot audio) their ClapModel.
        **{task: (pipeline_class, AutoModel) for task, pipeline_class in ZERO_SHOT_PIPELINES.items()},
    }
    for task, (pipeline_class, model_class) in tasks.items():
        entry = PIPELINE_REGISTRY.supported_tasks.get(task, {})
        if entry.get("impl") is pipeline_class:
            continue  # already registered: re-registering would only log an "Overwriting" warning
        registry_logger = logging.getLogger("transformers.pipelines.base")
        level = registry_logger.level
        registry_logger.setLevel(
            logging.ERROR
        )  # replacing transformers' own entry is intended, not a conflict
        try:
            PIPELINE_REGISTRY.register_pipeline(
                task,
                pipeline_class=pipeline_class,
                pt_model=model_class,
                default=entry.get("default"),  # transformers' default model of its own task (CLAP)
                type="multimodal",
            )
        finally:
            registry_logger.setLevel(level)


__all__ = [
    "AudioVisualCaptioningPipeline",
    "AudioVisualQuestionAnsweringPipeline",
    "AudioVisualRetrievalPipeline",
    "MODALITIES",
    "PipelineInputError",
    "PipelineInputNotFoundError",
    "VALOR_PIPELINES",
    "ValorZeroShotAudioClassificationPipeline",
    "ZERO_SHOT_PIPELINES",
    "ZeroShotAudioVisualClassificationPipeline",
    "ZeroShotVideoClassificationPipeline",
    "VideoGallery",
    "register_pipelines",
]
