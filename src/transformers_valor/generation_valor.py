"""VALOR's caption decoding: the settings its models carry and its beam search, as a `transformers` decoding method.

The reference (`model/pretrain.py`, `decode_beam`) captions with a beam of 3 over 30 steps and ranks hypotheses by
their summed log-probability, without length normalisation. A hypothesis that emitted [SEP] is finished and keeps
its score; at every step it competes as it is with the continuations of the running hypotheses for the
`num_beams` places (it may hold several of them, and it is dropped once `num_beams` continuations score higher).
The answer is the best of the beams left after the last step.

`transformers`' beam search differs even with `length_penalty=0.0`: it keeps finished hypotheses in a pool of their
own, so a finished hypothesis that the reference drops can still win there. [`valor_beam_search`] reproduces the
reference; `ValorForConditionalGeneration.generate` runs it for every plain beam search whose generation config says
`beam_ranking="valor"`, the setting [`valor_generation_config`] gives every VALOR model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import GenerationConfig
from transformers.generation.utils import GenerateBeamDecoderOnlyOutput

# `beam_ranking` values: the reference's rule, or `transformers`' own beam search (with its `length_penalty`).
BEAM_RANKINGS: tuple[str, ...] = ("valor", "transformers")
# The reference's caption decoding (`beam_size` 3, `max_generation_len` 30, no length normalisation).
VALOR_CAPTION_DECODING: dict = {
    "num_beams": 3,
    "max_new_tokens": 30,
    "length_penalty": 0.0,
    "beam_ranking": "valor",
}


def valor_generation_config(text_config) -> GenerationConfig:
    """
    The generation config of the VALOR models: the reference's caption decoding (beam 3, at most 30 new tokens,
    summed log-probabilities ranked as [`valor_beam_search`] does) and the special ids of `text_config`.
    """
    return GenerationConfig(
        bos_token_id=text_config.bos_token_id,
        eos_token_id=text_config.eos_token_id,
        pad_token_id=text_config.pad_token_id,
        **VALOR_CAPTION_DECODING,
    )


def _check_supported(generation_config: GenerationConfig, synced_gpus: bool) -> None:
    if synced_gpus:
        raise NotImplementedError(
            "VALOR's beam search does not run in lockstep across processes (`synced_gpus`); use "
            "`beam_ranking='transformers'`."
        )
    if generation_config.length_penalty not in (None, 0.0):
        raise ValueError(
            f"`length_penalty={generation_config.length_penalty}` does not apply to VALOR's beam ranking (summed "
            "log-probabilities, no length normalisation); pass `beam_ranking='transformers'` to use it."
        )
    wanted = [
        name
        for name in ("output_scores", "output_logits", "output_attentions", "output_hidden_states")
        if getattr(generation_config, name)
    ]
    if wanted:
        raise NotImplementedError(
            f"VALOR's beam search returns sequences and their scores only, not {wanted}; use "
            "`beam_ranking='transformers'`."
        )


def _next_log_probs(model, sequences, model_kwargs, logits_processor, first: bool):
    """One decoder step on every beam: processed log-probabilities `(beams, vocab)` and the updated kwargs."""
    next_length = None if first or not model_kwargs.get("use_cache") else 1
    model_inputs = model.prepare_inputs_for_generation(
        sequences, next_sequence_length=next_length, is_first_iteration=first, **model_kwargs
    )
    outputs = model(**model_inputs, return_dict=True)
    model_kwargs = model._update_model_kwargs_for_generation(outputs, model_kwargs, is_encoder_decoder=False)
    log_probs = F.log_softmax(outputs.logits[:, -1].float(), dim=-1)
    return logits_processor(sequences, log_probs), model_kwargs


def select_beams(
    scores: torch.Tensor,
    finished: torch.Tensor,
    log_probs: torch.Tensor,
    eos_token_ids: torch.Tensor,
    pad_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    One step of the reference's beam update.

    Args:
        scores (`(batch, beams)`): summed log-probabilities of the beams.
        finished (`(batch, beams)` bool): beams that emitted [SEP].
        log_probs (`(batch, beams, vocab)`): next-token log-probabilities.

    Returns:
        `(scores, parent beam, token, finished)`, each `(batch, beams)`: the `beams` best candidates, where a
        finished beam's candidates all carry its unchanged score (so it competes as it is) and append padding.
    """
    batch, beams, vocab = log_probs.shape
    candidates = scores[..., None] + log_probs  # (B, K, V)
    candidates = torch.where(finished[..., None], scores[..., None].expand_as(candidates), candidates)
    top_scores, top_index = candidates.view(batch, -1).topk(beams, dim=1)  # (B, K)
    parent = top_index // vocab
    tokens = top_index % vocab
    was_finished = finished.gather(1, parent)
    tokens = tokens.masked_fill(was_finished, pad_token_id)
    now_finished = was_finished | torch.isin(tokens, eos_token_ids)
    return top_scores, parent, tokens, now_finished


def _best_sequences(sequences, scores, num_return, eos_token_ids, prompt_length):
    """The `num_return` best beams of every sample, cut after the longest of them."""
    batch, beams = scores.shape
    order = scores.argsort(dim=1, descending=True)[:, :num_return]  # (B, n)
    best = sequences.view(batch, beams, -1).gather(1, order[..., None].expand(-1, -1, sequences.shape[-1]))
    best = best.reshape(batch * num_return, -1)
    generated = best[:, prompt_length:]
    is_eos = torch.isin(generated, eos_token_ids)
    first_eos = is_eos.int().argmax(dim=1) + 1
    lengths = torch.where(is_eos.any(dim=1), first_eos, torch.full_like(first_eos, generated.shape[1]))
    return best[:, : prompt_length + int(lengths.max())], scores.gather(1, order).reshape(-1)


def valor_beam_search(
    model,
    input_ids: torch.LongTensor,
    logits_processor,
    stopping_criteria,
    generation_config: GenerationConfig,
    synced_gpus: bool = False,
    **model_kwargs,
) -> torch.LongTensor | GenerateBeamDecoderOnlyOutput:
    """
    The reference's beam search (see the module docstring) with the signature of a `transformers` decoding method,
    so that `generate(custom_generate=valor_beam_search)` runs it on inputs already expanded to `num_beams` rows
    per sample. Logits processors and stopping criteria apply as in `transformers`' beam search.

    Returns:
        The `num_return_sequences` best sequences per sample, best first, padded after [SEP]; or a
        `GenerateBeamDecoderOnlyOutput` with `sequences` and `sequences_scores` (summed log-probabilities) when
        `return_dict_in_generate`.
    """
    _check_supported(generation_config, synced_gpus)
    num_beams = generation_config.num_beams
    batch_size = input_ids.shape[0] // num_beams
    eos = generation_config._eos_token_tensor.to(input_ids.device).flatten()
    pad = generation_config._pad_token_tensor
    pad = int(pad) if pad is not None else int(eos[0])
    scores = torch.zeros(batch_size, num_beams, device=input_ids.device)
    scores[:, 1:] = float(
        "-inf"
    )  # the rows of a sample are copies: start from one beam, as the reference does
    finished = torch.zeros(batch_size, num_beams, dtype=torch.bool, device=input_ids.device)
    offsets = torch.arange(batch_size, device=input_ids.device)[:, None] * num_beams
    sequences, first = input_ids, True
    while True:
        log_probs, model_kwargs = _next_log_probs(model, sequences, model_kwargs, logits_processor, first)
        first = False
        scores, parent, tokens, finished = select_beams(
            scores, finished, log_probs.view(batch_size, num_beams, -1), eos, pad
        )
        rows = (parent + offsets).view(-1)
        sequences = torch.cat([sequences[rows], tokens.view(-1, 1)], dim=1)
        if model_kwargs.get("cache") is not None:
            model_kwargs["cache"].reorder_cache(rows)
        if bool(finished.all()) or bool(stopping_criteria(sequences, None).all()):
            break
    best, best_scores = _best_sequences(
        sequences, scores, generation_config.num_return_sequences or 1, eos, input_ids.shape[1]
    )
    if generation_config.return_dict_in_generate:
        return GenerateBeamDecoderOnlyOutput(
            sequences=best, sequences_scores=best_scores, cache=model_kwargs.get("cache")
        )
    return best
