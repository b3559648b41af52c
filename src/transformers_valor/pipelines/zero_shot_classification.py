"""Zero-shot classification of videos, soundtracks and both with VALOR's MGA scores, as CLIP's
`zero-shot-image-classification` and CLAP's `zero-shot-audio-classification` pipelines do: every candidate label is
put into `hypothesis_template`, encoded as a text, scored against the media for the modality group (`tv`, `ta`,
`tva`) and the scores times the logit scale are turned into probabilities over the labels with a softmax.

- `zero-shot-video-classification` ([`ZeroShotVideoClassificationPipeline`], group `tv`): the frames.
- `zero-shot-audio-classification` ([`ValorZeroShotAudioClassificationPipeline`], group `ta`): the soundtrack. The
  task is transformers' own (CLAP); importing `transformers_valor` registers this subclass of transformers'
  pipeline for it, which runs VALOR models VALOR's way and every other model exactly as transformers does.
- `zero-shot-audiovisual-classification` ([`ZeroShotAudioVisualClassificationPipeline`], group `tva`): both.
"""

from __future__ import annotations

from typing import Any

from transformers import Pipeline
from transformers.pipelines.zero_shot_audio_classification import ZeroShotAudioClassificationPipeline

from ..configuration_valor import get_modality_group
from ..modeling_valor import ValorModel
from .base import check_positive_int, media_input, media_model_inputs


def valor_model_of(model: Any) -> ValorModel | None:
    """The [`ValorModel`] of `model` (itself, or the `.valor` of a VALOR head), else `None`."""
    if isinstance(model, ValorModel):
        return model
    valor = getattr(model, "valor", None)
    return valor if isinstance(valor, ValorModel) else None


def check_candidate_labels(candidate_labels: Any) -> list[str]:
    """A non-empty list of label strings (one string is one label); a `ValueError` names what is wrong."""
    if isinstance(candidate_labels, str):
        candidate_labels = [candidate_labels]
    if not isinstance(candidate_labels, (list, tuple)) or not candidate_labels:
        raise ValueError(f"`candidate_labels` must be a non-empty list of strings, got {candidate_labels!r}.")
    for label in candidate_labels:
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"Every candidate label must be a non-empty string, got {label!r}.")
    return list(candidate_labels)


def check_hypothesis_template(template: Any) -> str:
    """A template with one `{}` for the label; a `ValueError` otherwise."""
    if not isinstance(template, str) or template.count("{}") != 1:
        raise ValueError(f"`hypothesis_template` must be a string with one `{{}}`, got {template!r}.")
    return template


class ValorZeroShotClassificationPipeline(Pipeline):
    """
    Base of VALOR's zero-shot classification pipelines: scores `candidate_labels` (each put into
    `hypothesis_template`) against one input's media for the modality `group`, with any VALOR model
    ([`ValorModel`] or a head holding one).

    Inputs: a media file path, a decoded array / tensor of the one modality the group reads (frames `(frames,
    height, width, 3)` or a waveform), or a dict `{"video": ..., "audio": ..., "sampling_rate": ...}`; a list of
    inputs gives one result per input.

    Call arguments (also accepted when the pipeline is built): `candidate_labels` (required),
    `hypothesis_template` (default: the class's), `num_frames` / `num_clips` (default: the processor's) and
    `processor_kwargs` (further [`ValorProcessor`] arguments).

    Returns, per input, `[{"score": float, "label": str}, ...]` for every label, best first; the scores are the
    softmax over the labels of the MGA scores times the model's logit scale, as CLIP and CLAP compute theirs.
    """

    group: str = "tva"
    default_hypothesis_template: str = "a video of {}."
    # A model that is not VALOR is run by this transformers pipeline class instead (None: refused).
    fallback: type[Pipeline] | None = None
    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _load_video_processor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)  # refuses a model that is not VALOR without a fallback
        if self.valor is not None and self.processor is None:
            raise ValueError(
                f"The {self.task or type(self).__name__} pipeline needs a ValorProcessor with a VALOR model: pass "
                "`processor=` or load a checkpoint that has processor_config.json."
            )

    @property
    def valor(self) -> ValorModel | None:
        """The pipeline's [`ValorModel`] (`None` for a model that is not VALOR)."""
        return valor_model_of(self.model)

    @property
    def modalities(self) -> str:
        """`"video"`, `"audio"` or `"both"`: the media the group reads."""
        media = get_modality_group(self.group).candidates
        return "both" if len(media) == 2 else media[0]

    def _sanitize_parameters(self, **kwargs):
        if self.valor is not None:
            return self._valor_parameters(**kwargs)
        if self.fallback is None:  # called by `Pipeline.__init__`, before `__init__` refuses the model
            raise TypeError(
                f"The {type(self).__name__} needs a VALOR model (ValorModel or a head with `.valor`), got "
                f"{type(self.model).__name__}."
            )
        return self.fallback._sanitize_parameters(self, **kwargs)

    def _valor_parameters(
        self,
        candidate_labels: list[str] | None = None,
        hypothesis_template: str | None = None,
        num_frames: int | None = None,
        num_clips: int | None = None,
        processor_kwargs: dict[str, Any] | None = None,
    ):
        preprocess: dict[str, Any] = {}
        if candidate_labels is not None:
            preprocess["candidate_labels"] = check_candidate_labels(candidate_labels)
        if hypothesis_template is not None:
            preprocess["hypothesis_template"] = check_hypothesis_template(hypothesis_template)
        for name, value in (("num_frames", num_frames), ("num_clips", num_clips)):
            if value is not None:
                preprocess[name] = check_positive_int(name, value)
        if processor_kwargs is not None:
            preprocess["processor_kwargs"] = dict(processor_kwargs)
        return preprocess, {}, {}

    def preprocess(self, inputs, **params) -> dict[str, Any]:
        """The media and the label texts as model inputs (transformers' preprocessing for a non-VALOR model)."""
        if self.valor is None:
            return self.fallback.preprocess(self, inputs, **params)
        return self._valor_preprocess(inputs, **params)

    def _valor_preprocess(
        self,
        inputs: Any,
        candidate_labels: list[str] | None = None,
        hypothesis_template: str | None = None,
        num_frames: int | None = None,
        num_clips: int | None = None,
        processor_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if candidate_labels is None:
            raise ValueError("Give the `candidate_labels` to choose from.")
        template = hypothesis_template or self.default_hypothesis_template
        media = media_input(inputs, self.modalities)
        model_inputs = media_model_inputs(
            self.processor, media, self.modalities, num_frames, num_clips, processor_kwargs
        )
        texts = self.processor(
            text=[template.format(label) for label in candidate_labels], return_tensors="pt"
        )
        return {**model_inputs, **texts, "candidate_labels": candidate_labels}

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        if self.valor is None:
            return self.fallback._forward(self, model_inputs)
        labels = model_inputs.pop("candidate_labels")
        spec = get_modality_group(self.group)
        valor = self.valor
        features = valor.modality_features(
            spec.modalities,
            model_inputs["input_ids"],
            model_inputs["attention_mask"],
            pixel_values_videos=model_inputs.get("pixel_values_videos"),
            input_features=model_inputs.get("input_features"),
            input_features_mask=model_inputs.get("input_features_mask"),
        )
        texts, media = valor.group_features(self.group, **features)
        logits = (valor.similarity(texts, media) * valor.get_logit_scale()).t()  # (1 input, labels)
        return {"logits": logits, "candidate_labels": labels}

    def postprocess(self, model_outputs: dict[str, Any]) -> list[dict[str, Any]]:
        """`[{"score", "label"}, ...]`, best first."""
        if self.valor is None:
            return self.fallback.postprocess(self, model_outputs)
        scores = model_outputs["logits"][0].float().softmax(dim=0).tolist()
        ranked = sorted(zip(scores, model_outputs["candidate_labels"]), key=lambda pair: -pair[0])
        return [{"score": score, "label": label} for score, label in ranked]


class ZeroShotVideoClassificationPipeline(ValorZeroShotClassificationPipeline):
    """
    `zero-shot-video-classification`: which of `candidate_labels` a video shows, from its frames (VALOR's
    text-video group `tv`); see [`ValorZeroShotClassificationPipeline`].

    Example:

    ```python
    >>> import transformers_valor  # registers the pipeline
    >>> from transformers import pipeline
    >>> classifier = pipeline("zero-shot-video-classification", model="path/or/repo")  # doctest: +SKIP
    >>> classifier("dog.mp4", candidate_labels=["a dog", "a guitar"])  # doctest: +SKIP
    [{'score': 0.93, 'label': 'a dog'}, {'score': 0.07, 'label': 'a guitar'}]
    ```
    """

    group = "tv"
    default_hypothesis_template = "a video of {}."


class ZeroShotAudioVisualClassificationPipeline(ValorZeroShotClassificationPipeline):
    """
    `zero-shot-audiovisual-classification`: which of `candidate_labels` describes a video with its sound, from its
    frames and soundtrack together (VALOR's text-audiovisual group `tva`); see
    [`ValorZeroShotClassificationPipeline`]. A path gives both; a dict gives `{"video": ..., "audio": ...}`.
    """

    group = "tva"
    default_hypothesis_template = "a video of {}."


class ValorZeroShotAudioClassificationPipeline(
    ValorZeroShotClassificationPipeline, ZeroShotAudioClassificationPipeline
):
    """
    transformers' `zero-shot-audio-classification` pipeline, extended to VALOR: with a VALOR model it classifies a
    soundtrack (a path to an audio or video file, a waveform, or `{"audio": waveform, "sampling_rate": rate}`) by
    VALOR's text-audio group `ta` (see [`ValorZeroShotClassificationPipeline`]); every other model (CLAP) runs
    exactly as in transformers.
    """

    group = "ta"
    default_hypothesis_template = "the sound of {}."
    fallback = ZeroShotAudioClassificationPipeline
    # VALOR needs its processor, CLAP its tokenizer and feature extractor: each is loaded when the folder has it.
    _load_processor = None
    _load_tokenizer = None
    _load_feature_extractor = None

    def __call__(self, inputs, **kwargs):
        """Classify one input or a list (see the class docstring)."""
        return Pipeline.__call__(self, inputs, **kwargs)


ZERO_SHOT_PIPELINES: dict[str, type[ValorZeroShotClassificationPipeline]] = {
    "zero-shot-video-classification": ZeroShotVideoClassificationPipeline,
    "zero-shot-audio-classification": ValorZeroShotAudioClassificationPipeline,
    "zero-shot-audiovisual-classification": ZeroShotAudioVisualClassificationPipeline,
}
