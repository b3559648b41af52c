"""VALOR pipelines for `transformers.pipeline`: audiovisual captioning, retrieval and question answering.

`register_pipelines()` (called when `transformers_valor` is imported) adds the tasks to transformers' pipeline
registry, so that `pipeline("audiovisual-captioning", model=...)` works for a saved folder or a hub id.
"""

from transformers.pipelines import PIPELINE_REGISTRY

from ..modeling_valor import ValorForConditionalGeneration, ValorModel
from ..retrieval.gallery import VideoGallery
from .audiovisual_captioning import AudioVisualCaptioningPipeline
from .audiovisual_question_answering import AudioVisualQuestionAnsweringPipeline
from .audiovisual_retrieval import AudioVisualRetrievalPipeline
from .base import MODALITIES, PipelineInputError, PipelineInputNotFoundError

# task name -> (pipeline class, model class loaded for a checkpoint name)
VALOR_PIPELINES: dict[str, tuple[type, type]] = {
    "audiovisual-captioning": (AudioVisualCaptioningPipeline, ValorForConditionalGeneration),
    "audiovisual-retrieval": (AudioVisualRetrievalPipeline, ValorModel),
    "audiovisual-question-answering": (AudioVisualQuestionAnsweringPipeline, ValorForConditionalGeneration),
}


def register_pipelines() -> None:
    """Register the VALOR tasks with `transformers.pipelines.PIPELINE_REGISTRY` (idempotent, process-local)."""
    for task, (pipeline_class, model_class) in VALOR_PIPELINES.items():
        if PIPELINE_REGISTRY.supported_tasks.get(task, {}).get("impl") is pipeline_class:
            continue  # already registered: re-registering would only log an "Overwriting" warning
        PIPELINE_REGISTRY.register_pipeline(
            task, pipeline_class=pipeline_class, pt_model=model_class, type="multimodal"
        )


__all__ = [
    "AudioVisualCaptioningPipeline",
    "AudioVisualQuestionAnsweringPipeline",
    "AudioVisualRetrievalPipeline",
    "MODALITIES",
    "PipelineInputError",
    "PipelineInputNotFoundError",
    "VALOR_PIPELINES",
    "VideoGallery",
    "register_pipelines",
]
