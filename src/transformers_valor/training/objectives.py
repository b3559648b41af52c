"""Every task's training objective, as an `nn.Module` that wraps the task's model.

`loop.train` runs every task with the same loop (data mix, Accelerate, checkpoints, exact resume, NaN guard);
the YAML's `task:` picks the model class (`model_factory.TASK_MODEL_CLASSES`) and the objective here:

| task | objective | model | loss per batch |
| --- | --- | --- | --- |
| `pretrain` | [`PretrainingObjective`] | `ValorForPreTraining` | `alpha * L_MGA + L_MGC (+ L_MLM)` over the batch's groups |
| `retrieval` | [`RetrievalObjective`] | `ValorForRetrieval` | mean over the dataset's `contrastive_groups` of the MGA loss |
| `captioning` | [`CaptioningObjective`] | `ValorForConditionalGeneration` | mean over `caption_groups` of the MGC loss |
| `captioning` + `scst.enabled` | [`SCSTObjective`] | `ValorForConditionalGeneration` | the SCST loss (see `scst`) |
| `qa` | [`CaptioningObjective`] | `ValorForConditionalGeneration` | VALOR's QA loss on the answer (mean per answer), the question composed into the decoder's prompt |

An objective computes the whole loss of a batch in ONE `forward`, so that DDP (which wraps the objective, not the
model) sees one forward per backward whatever the number of groups. It also decides the distributed semantics:
pretraining and retrieval score against the global batch (`MultimodalGroupingAlignmentLoss(gather_distributed=
True)`: features all-gathered with gradients) and pretraining normalises MGC by the global labelled-token count
(`CaptionLoss(normalize_across_processes=True)`, and the conditioned-MLM loss likewise), so DDP's averaged
gradients equal a single-process run on the global batch; the model forwards themselves only see the local batch.
Task prompts (VALOR-L) are added by the models; the objectives pass the collated text only.

`forward` takes the collated batch (`data.collator.model_inputs` of a `ValorTrainingCollator` batch, plus its
`references`) as one dict and returns an [`ObjectiveOutput`].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..configuration_valor import MODALITY_GROUPS
from ..losses import CaptionLoss, MultimodalGroupingAlignmentLoss
from ..metrics import CiderD
from ..modeling_valor import ValorForConditionalGeneration, ValorModel
from .config import Task
from .model_factory import TASK_MODEL_CLASSES
from .scst import SCSTArguments, sample_with_greedy_baseline, scst_rewards, sequence_log_probs

# The batch key of each modality's input.
_INPUT_KEYS = {"text": "input_ids", "video": "pixel_values_videos", "audio": "input_features"}


@dataclass
class ObjectiveOutput:
    """
    What a [`TrainingObjective`] returns.

    Args:
        loss (`torch.FloatTensor`): the objective to back-propagate.
        components (`dict[str, torch.Tensor]`): its logged parts, e.g. `mga`, `mgc`, `mga_tva`, `mgc_tv`,
            `scst_reward`, `scst_sample_cider`, `scst_greedy_cider`.
    """

    loss: torch.Tensor
    components: dict[str, torch.Tensor]


def _mean(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack(list(losses.values())).mean()


def _require(batch: Mapping[str, Any], modalities: set[str], why: str) -> None:
    missing = sorted(_INPUT_KEYS[m] for m in modalities if batch.get(_INPUT_KEYS[m]) is None)
    if missing:
        raise ValueError(f"{why} needs {', '.join(missing)}, which the batch does not have.")


class TrainingObjective(nn.Module):
    """
    Base class: a task's model plus its loss, as one module for Accelerate/DDP to wrap.

    Args:
        model: the task's model, an instance of `model_factory.TASK_MODEL_CLASSES[task]` (checked).
        task (`str`): the task it trains.
    """

    def __init__(self, model: nn.Module, task: Task):
        super().__init__()
        expected = TASK_MODEL_CLASSES[task]
        if not isinstance(model, expected):
            raise TypeError(f"task {task!r} trains a {expected.__name__}, got {type(model).__name__}.")
        self.model = model
        self.task = task

    @property
    def valor(self) -> ValorModel:
        """The `ValorModel` inside the task's model (for logging the temperature)."""
        return self.model.valor

    @property
    def _no_split_modules(self) -> list[str]:
        """The model's layer classes that this model holds: FSDP's `TRANSFORMER_BASED_WRAP` (Accelerate, and the
        loop's FSDP2 on CPU) makes each such layer its own unit when the config names no classes; a class the
        model lacks (CLIP layers in VALOR-B) would be an error there."""
        present = {type(module).__name__ for module in self.model.modules()}
        return [name for name in self.model._no_split_modules if name in present]

    def forward(self, batch: Mapping[str, Any]) -> ObjectiveOutput:
        """The loss of one collated batch."""
        raise NotImplementedError


class PretrainingObjective(TrainingObjective):
    """
    VALOR pretraining (MGA + MGC, and conditioned MLM for datasets with `mlm_groups`) over the batch's groups,
    through `ValorForPreTraining.compute_losses` with the global-batch MGA loss and the globally normalised MGC and
    MLM losses. Components: `mga`, `mgc`, `mlm` and every group's loss (`mga_<group>`, `mgc_<group>`,
    `mlm_<group>`).
    """

    def __init__(self, model: nn.Module):
        super().__init__(model, "pretrain")
        config = model.config
        self.mga_loss = MultimodalGroupingAlignmentLoss(gather_distributed=True)
        self.caption_loss = CaptionLoss(
            config.caption_objective, config.label_smoothing, normalize_across_processes=True
        )
        # Cross-entropy on the masked positions, whatever the caption objective (reference: plain CE, no smoothing).
        self.mlm_loss = CaptionLoss("unimlm", normalize_across_processes=True)

    _INPUTS = (
        "input_ids",
        "attention_mask",
        "pixel_values_videos",
        "input_features",
        "input_features_mask",
        "caption_input_ids",
        "labels",
        "prompt_ids",
        "prompt_attention_mask",
        "contrastive_groups",
        "caption_groups",
        "mlm_input_ids",
        "mlm_labels",
        "mlm_groups",
    )

    def forward(self, batch: Mapping[str, Any]) -> ObjectiveOutput:
        """`alpha * L_MGA + L_MGC + L_MLM` of the batch; see `ValorForPreTraining.compute_losses` for the inputs."""
        inputs = {key: batch[key] for key in self._INPUTS if key in batch}
        output = self.model.compute_losses(self.mga_loss, self.caption_loss, mlm_loss=self.mlm_loss, **inputs)
        components = {
            "mga": output.contrastive_loss,
            "mgc": output.caption_loss,
            "mlm": output.mlm_loss,
            **output.group_losses,
        }
        return ObjectiveOutput(output.loss, {k: v for k, v in components.items() if v is not None})


class RetrievalObjective(TrainingObjective):
    """
    Retrieval fine-tuning: the mean over the batch's `contrastive_groups` of the MGA loss against the global
    batch. Each modality the groups read is encoded once per batch (`get_text_features`, `get_video_features`,
    `get_audio_features`) and shared by the groups. Components: `mga_<group>`.
    """

    def __init__(self, model: nn.Module):
        super().__init__(model, "retrieval")
        self.mga_loss = MultimodalGroupingAlignmentLoss(gather_distributed=True)

    def forward(self, batch: Mapping[str, Any]) -> ObjectiveOutput:
        """The MGA loss of every contrastive group of the batch, and their mean."""
        groups = batch.get("contrastive_groups")
        if not groups:
            raise ValueError("Retrieval fine-tuning needs at least one contrastive group.")
        needed = set().union(*(MODALITY_GROUPS[g].modalities for g in groups))
        _require(batch, needed, f"Retrieval of groups {list(groups)}")
        valor = self.valor
        encoders = {
            "text": lambda: valor.get_text_features(batch["input_ids"], batch.get("attention_mask")),
            "video": lambda: valor.get_video_features(batch["pixel_values_videos"]),
            "audio": lambda: valor.get_audio_features(
                batch["input_features"], batch.get("input_features_mask")
            ),
        }
        features = {name: encode() if name in needed else None for name, encode in encoders.items()}
        losses = self.mga_loss(valor, features, groups, valor.get_logit_scale())
        return ObjectiveOutput(_mean(losses), losses)


class CaptioningObjective(TrainingObjective):
    """
    Captioning (`task="captioning"`) or question answering (`task="qa"`, the question as `question_ids`, which the
    model composes into its prompt): the mean over the batch's `caption_groups` of the model's loss (MGC, or VALOR's
    QA loss), each group decoding from its modalities (its own encoder passes; VALOR's recipes train one group per
    dataset). Components: `mgc_<group>`.

    Args:
        model ([`ValorForConditionalGeneration`]).
        task (`str`, defaults to `"captioning"`): `"captioning"` or `"qa"`.
    """

    def __init__(self, model: nn.Module, task: Task = "captioning"):
        if task not in ("captioning", "qa"):
            raise ValueError(f"CaptioningObjective trains captioning or qa, not {task!r}.")
        super().__init__(model, task)

    def forward(self, batch: Mapping[str, Any]) -> ObjectiveOutput:
        """The MGC loss of every caption group of the batch, and their mean."""
        groups = batch.get("caption_groups")
        if not groups:
            raise ValueError(f"{self.task} fine-tuning needs at least one caption group.")
        if self.task == "qa" and batch.get("question_ids") is None:
            raise ValueError(
                "Question answering needs the questions as `question_ids` (set `question_column`)."
            )
        decoder_ids = batch.get("caption_input_ids")
        losses = {}
        for group in groups:
            use = MODALITY_GROUPS[group].decoder_modalities
            losses[f"mgc_{group}"] = self.model(
                input_ids=decoder_ids if decoder_ids is not None else batch["input_ids"],
                attention_mask=batch.get("attention_mask"),
                pixel_values_videos=batch.get("pixel_values_videos") if "video" in use else None,
                input_features=batch.get("input_features") if "audio" in use else None,
                prompt_ids=batch.get("prompt_ids"),
                prompt_attention_mask=batch.get("prompt_attention_mask"),
                question_ids=batch.get("question_ids"),
                question_attention_mask=batch.get("question_attention_mask"),
                labels=batch["labels"],
                return_dict=True,
            ).loss
        return ObjectiveOutput(_mean(losses), losses)


class SCSTObjective(TrainingObjective):
    """
    Self-critical sequence training of a captioner on the batch's first caption group: the video/audio are
    encoded once with gradients, greedy and sampled captions are decoded from those states without gradients,
    and the loss is `-mean(reward * log p(sample))` with the CIDEr-D advantage over the greedy caption (see
    `scst`). Components: `scst_loss`, `scst_reward`, `scst_sample_cider`, `scst_greedy_cider`.

    Args:
        model ([`ValorForConditionalGeneration`]).
        args ([`SCSTArguments`]): sampling settings.
        scorer ([`CiderD`]): the reward, with document frequencies from the training references.
        tokenizer: decodes sampled captions for the reward.
    """

    def __init__(self, model: nn.Module, args: SCSTArguments, scorer: CiderD, tokenizer):
        super().__init__(model, "captioning")
        self.args = args
        self.scorer = scorer
        self.tokenizer = tokenizer

    def forward(self, batch: Mapping[str, Any]) -> ObjectiveOutput:
        """The SCST loss of the batch (needs its `references`)."""
        if not batch.get("caption_groups"):
            raise ValueError("captioning fine-tuning needs at least one caption group.")
        if batch.get("references") is None:
            raise ValueError("SCST needs the batch's `references`.")
        model: ValorForConditionalGeneration = self.model
        use = MODALITY_GROUPS[batch["caption_groups"][0]].decoder_modalities
        # Encoded once, with gradients (the SCST gradient reaches the encoders through cross-attention).
        video_states, audio_states = model.encode_modalities(
            batch.get("pixel_values_videos") if "video" in use else None,
            batch.get("input_features") if "audio" in use else None,
        )
        # The prompt is resolved once (VALOR-L's captioning prompt), so sampling and scoring use the same one.
        prompt_ids, prompt_mask = model.decoder_prompt(
            batch["input_ids"].shape[0],
            batch["input_ids"].device,
            batch.get("prompt_ids"),
            batch.get("prompt_attention_mask"),
        )
        prompts = {"prompt_ids": prompt_ids, "prompt_attention_mask": prompt_mask}
        greedy, sampled = sample_with_greedy_baseline(
            model,
            self.args,
            video_states=video_states.detach() if video_states is not None else None,
            audio_states=audio_states.detach() if audio_states is not None else None,
            **prompts,
        )
        decode = self.tokenizer.batch_decode
        rewards, stats = scst_rewards(
            self.scorer,
            decode(sampled, skip_special_tokens=True),
            decode(greedy, skip_special_tokens=True),
            batch["references"],
            self.args.num_samples,
        )

        def repeat(t):
            return t.repeat_interleave(self.args.num_samples, dim=0) if t is not None else None

        token_log_probs, _ = sequence_log_probs(
            model,
            sampled,
            repeat(video_states),
            repeat(audio_states),
            repeat(prompts["prompt_ids"]),
            repeat(prompts["prompt_attention_mask"]),
            chunk_size=self.args.log_prob_chunk_size,
        )
        rewards = rewards.to(token_log_probs.device)
        loss = -(rewards * token_log_probs.sum(dim=1)).mean()
        components = {
            "scst_loss": loss.detach(),
            "scst_reward": rewards.mean(),
            "scst_sample_cider": torch.tensor(stats["sample_cider"]),
            "scst_greedy_cider": torch.tensor(stats["greedy_cider"]),
        }
        return ObjectiveOutput(loss, components)


def build_objective(
    task: Task,
    model: nn.Module,
    scst: SCSTArguments | None = None,
    references: Sequence[Sequence[str]] | None = None,
    tokenizer=None,
) -> TrainingObjective:
    """
    The objective of `task` around `model`. With `task="captioning"` and `scst.enabled`, an [`SCSTObjective`]
    whose CIDEr-D document frequencies come from `references` (every training video's captions) and whose
    sampled captions are decoded with `tokenizer`.
    """
    if scst is not None and scst.enabled:
        if task != "captioning":
            raise ValueError("SCST applies to `task: captioning` only.")
        if references is None or tokenizer is None:
            raise ValueError("SCST needs the training `references` (for CIDEr-D) and a `tokenizer`.")
        return SCSTObjective(model, scst, CiderD(references, sigma=scst.cider_sigma), tokenizer)
    if task == "pretrain":
        return PretrainingObjective(model)
    if task == "retrieval":
        return RetrievalObjective(model)
    if task in ("captioning", "qa"):
        return CaptioningObjective(model, task)
    raise ValueError(f"Unknown task {task!r}.")
