"""The `audiovisual-question-answering` pipeline: answer a question about a video's frames and soundtrack."""

from __future__ import annotations

from typing import Any

from transformers import GenerationConfig

from .base import Modalities, ValorGenerationPipeline, check_positive_int


class AudioVisualQuestionAnsweringPipeline(ValorGenerationPipeline):
    """
    Answers questions about local video files with [`ValorForConditionalGeneration`]: the question is passed as
    `question_ids` and the model composes its decoder prompt (the question itself, or with `use_task_prompt`
    (VALOR-L) `[CLS] answer the question` + the question), and the answer is decoded greedily, as VALOR does for
    QA, unless `num_beams` / `do_sample` / `generation_config` are given.

    Inputs: `pipe(video, question)`, `pipe({"video": ..., "question": str})` or a list of such dicts, where a
    video is a path, decoded frames (`modalities="video"`), or a dict `{"video": ..., "audio": ...,
    "sampling_rate": ...}` (also as the keys of the question's dict) as in [`AudioVisualCaptioningPipeline`].
    A list of videos with one question asks it of each video; one video with a list of questions asks each; two lists of
    the same length are paired element-wise. Each pair gives `[{"answer": str}]`, or with `top_k` the `top_k`
    best answers `[{"score": float, "answer": str}, ...]`, best first (as transformers' visual-question-answering
    pipeline).

    Call arguments (also accepted when the pipeline is built): `modalities` (`"video"`, `"audio"` or
    `"both"`, the default), `num_frames`, `num_clips`, `processor_kwargs`, `generate_kwargs` and any generation
    parameter (`max_new_tokens` defaults to 30), `skip_special_tokens`, as in [`AudioVisualCaptioningPipeline`];
    `top_k` (`int`, *optional*): return that many answers with their scores, the probability of the answer's
    tokens under the model (`exp` of their summed log-probability): the greedy answer for 1, the beams of a
    beam search of `top_k` beams (VALOR's ranking) otherwise. It is the number of answers, not the sampling
    parameter; pass that as `generate_kwargs={"top_k": ...}`.

    Example:

    ```python
    >>> import transformers_valor  # registers the pipeline
    >>> from transformers import pipeline
    >>> qa = pipeline("audiovisual-question-answering", model="path/or/repo")  # doctest: +SKIP
    >>> qa("dog.mp4", "what is barking")  # doctest: +SKIP
    [{'answer': 'dog'}]
    ```
    """

    _default_generation_config = GenerationConfig(max_new_tokens=30)
    _forced_generation_defaults = {"num_beams": 1, "do_sample": False}

    def __call__(
        self, video: Any, question: str | list[str] | None = None, **kwargs
    ) -> list[dict[str, str]] | list[list[dict[str, str]]]:
        """
        Answer `question` about `video` (see the class docstring for the accepted input shapes).

        Returns:
            For one (video, question) pair, `[{"answer": str}]`; for several, one such list per pair.

        Raises:
            FileNotFoundError: a video path is not an existing file (the message names it).
            ValueError: a question is missing or empty, list lengths differ, or `modalities` is not one of
                `"video"`, `"audio"`, `"both"`.
        """
        return super().__call__(self._pair_inputs(video, question), **kwargs)

    @staticmethod
    def _pair_inputs(video: Any, question: str | list[str] | None) -> dict[str, Any] | list[dict[str, Any]]:
        if question is None:
            if isinstance(video, dict):
                return video
            if isinstance(video, list) and all(isinstance(item, dict) for item in video):
                return video
            raise ValueError(
                "Give a question: `pipe(video, question)` or `pipe({'video': path, 'question': text})`."
            )
        single_video = not isinstance(video, (list, tuple))  # a path, a decoded array or a media dict
        single_question = isinstance(question, str)
        if single_video and single_question:
            return {"video": video, "question": question}
        if single_question:
            return [{"video": v, "question": question} for v in video]
        if single_video:
            return [{"video": video, "question": q} for q in question]
        videos, questions = list(video), list(question)
        if len(videos) != len(questions):
            raise ValueError(
                f"Got {len(videos)} videos and {len(questions)} questions; give one question, one video, or "
                "lists of the same length."
            )
        return [{"video": v, "question": q} for v, q in zip(videos, questions)]

    def _sanitize_parameters(
        self,
        modalities: Modalities | None = None,
        num_frames: int | None = None,
        num_clips: int | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        generate_kwargs: dict[str, Any] | None = None,
        skip_special_tokens: bool | None = None,
        top_k: int | None = None,
        **kwargs,
    ):
        preprocess_params, forward_params = self._sanitize_common(
            modalities, num_frames, num_clips, processor_kwargs, generate_kwargs, kwargs
        )
        postprocess_params = {}
        if skip_special_tokens is not None:
            postprocess_params["skip_special_tokens"] = skip_special_tokens
        if top_k is not None:
            top_k = check_positive_int("top_k", top_k)
            generation = forward_params.setdefault("generate_kwargs", {})
            if generation.get("num_beams", top_k) < top_k or generation.get("do_sample"):
                raise ValueError(
                    f"`top_k={top_k}` answers come from a beam search of `top_k` beams; got "
                    f"num_beams={generation.get('num_beams')}, do_sample={generation.get('do_sample')}."
                )
            generation.setdefault("num_beams", top_k)
            generation.update(
                num_return_sequences=top_k, return_dict_in_generate=True, output_scores=top_k == 1
            )
            postprocess_params["top_k"] = top_k
        return preprocess_params, forward_params, postprocess_params

    def preprocess_input(
        self,
        inputs: dict[str, Any],
        modalities: Modalities = "both",
        num_frames: int | None = None,
        num_clips: int | None = None,
        processor_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Decode and process the video of a `{"video", "question"}` pair; the question becomes `question_ids`."""
        if not isinstance(inputs, dict) or "question" not in inputs:
            raise ValueError(
                f"Each input must be a dict with a 'question' and 'video' and/or 'audio', got {inputs!r}."
            )
        question = inputs["question"]
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"The question must be a non-empty string, got {question!r}.")
        media = inputs["video"] if set(inputs) == {"video", "question"} else inputs
        model_inputs = self._encode_media(
            media, modalities, num_frames, num_clips, processor_kwargs, question, extra_keys=("question",)
        )
        model_inputs["question_ids"] = model_inputs.pop("prompt_ids")
        model_inputs["question_attention_mask"] = model_inputs.pop("prompt_attention_mask")
        return model_inputs

    def postprocess(
        self, model_outputs: dict[str, Any], skip_special_tokens: bool = True, top_k: int | None = None
    ) -> list[dict[str, Any]]:
        """Decode the generated ids to `[{"answer": str}]`, or with `top_k` to `[{"score", "answer"}, ...]` best
        first."""
        answers = self._decode(model_outputs, skip_special_tokens=skip_special_tokens)
        if top_k is None:
            return [{"answer": text} for text in answers]
        scores = model_outputs["sequence_log_probs"][0].exp().tolist()
        ranked = sorted(zip(scores, answers), key=lambda pair: -pair[0])
        return [{"score": score, "answer": text} for score, text in ranked]
