"""Checkpoints of a run (atomic `accelerator.save_state` folders, resume) and the final `save_pretrained` model.

A checkpoint is `<output_dir>/checkpoints/checkpoint-<step>/`: model, optimizer, scheduler, the RNG states of
every process and the [`TrainState`] progress, written under a temporary name and renamed once complete.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator

from ..processing_valor import ValorProcessor

CHECKPOINT_PREFIX = "checkpoint-"


@dataclass
class TrainState:
    """Progress saved with every checkpoint (registered with `accelerator.register_for_checkpointing`)."""

    step: int = 0
    batches_consumed: int = 0
    samples_seen: int = 0
    samples_failed: int = 0

    def state_dict(self) -> dict[str, int]:
        """Plain-data state for `save_state`."""
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore from `state_dict()`."""
        for key, value in state.items():
            setattr(self, key, value)


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `<output_dir>/checkpoints`, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def resolve_checkpoint(output_dir: str | os.PathLike, resume_from_checkpoint: str | None) -> Path | None:
    """`"latest"` -> the newest checkpoint in `output_dir` (None when there is none); a path -> itself."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"No checkpoint folder {path}.")
    return path


def save_checkpoint(
    accelerator: Accelerator, output_dir: str | os.PathLike, step: int, limit: int | None
) -> Path:
    """
    `accelerator.save_state` into `checkpoints/.tmp-checkpoint-<step>`, then rename it to `checkpoint-<step>`:
    a crash while saving never leaves a checkpoint that looks complete. Older checkpoints beyond `limit` are
    deleted.
    """
    root = Path(output_dir) / "checkpoints"
    final = root / f"{CHECKPOINT_PREFIX}{step}"
    tmp = root / f".tmp-{CHECKPOINT_PREFIX}{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if limit:
            for old in list_checkpoints(output_dir)[:-limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def save_final_model(accelerator: Accelerator, objective, processor: ValorProcessor, final_dir: Path) -> Path:
    """
    `save_pretrained` of the task's model inside the prepared training objective (full state dict gathered under
    FSDP/DeepSpeed) and of the processor, e.g. a `ValorForRetrieval` folder for retrieval fine-tuning.
    """
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(objective)
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(objective).model
        state_dict = {k[len("model.") :]: v for k, v in state_dict.items() if k.startswith("model.")}
        model.save_pretrained(final_dir, state_dict=state_dict, safe_serialization=True)
        processor.save_pretrained(final_dir)
    accelerator.wait_for_everyone()
    return final_dir
