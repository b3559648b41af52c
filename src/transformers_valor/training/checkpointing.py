"""Checkpoints of a run (atomic folders of non-executable files, exact resume) and the final `save_pretrained` model.

A checkpoint is `<output_dir>/checkpoints/checkpoint-<step>/`:

- `model.safetensors`: the training objective's weights (the task model under `model.`);
- `optimizer.json` + `optimizer.safetensors`, `scheduler.json`, `train_state.json` ([`TrainState`]) and, with fp16,
  `scaler.json`;
- `rng_state_<rank>.json` + `.safetensors`: the Python, NumPy and torch (CPU, CUDA) random states of every process;
- `checkpoint.json`: the manifest (format version, step, number of processes, the files above).

Nothing is pickled: the state goes through `safe_state` (JSON + safetensors), and a folder holding any file its
manifest does not list (a `.pkl` planted there, a checkpoint of an older version) is refused before anything is
read. Under FSDP and DeepSpeed the weights and optimizer are sharded by those engines; that part of the folder is
written and read by `accelerator.save_state` / `load_state` (their formats, listed in the manifest as
`engine_files`). A checkpoint is written under `.tmp-checkpoint-<step>` and renamed once complete on every process;
older checkpoints are renamed to `.deleting-*` before they are deleted; a failed write (a full disk) removes the
temporary folder, keeps the last good checkpoint and raises [`CheckpointWriteError`] on every process.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from ..modelcard import create_model_card
from ..processing_valor import ValorProcessor
from .distributed import REPLICATED_TYPES, is_fsdp2
from .safe_state import StateFileError, check_like, load_state_tree, save_state_tree, state_files
from .sharded_state import full_state_dict, load_sharded_state, save_sharded_state

CHECKPOINT_PREFIX = "checkpoint-"
MANIFEST_NAME = "checkpoint.json"
CHECKPOINT_FORMAT = "transformers_valor.checkpoint"
CHECKPOINT_VERSION = 1
MODEL_FILE = "model.safetensors"
TMP_PREFIX, DELETING_PREFIX = ".tmp-", ".deleting-"
# How the weights and optimizer are stored: one copy (`model.safetensors`, `optimizer.*`), FSDP2 shards per process
# (`sharded_state`), or the files of another engine (FSDP1, DeepSpeed: `accelerator.save_state`).
Layout = Literal["replicated", "fsdp2", "engine"]
LAYOUTS: tuple[str, ...] = ("replicated", "fsdp2", "engine")
_STEP_PATTERN = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint folder cannot be resumed from; the message names the folder and the file at fault."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint (or the final model) failed; the last good checkpoint is kept."""


@dataclass
class TrainState:
    """Progress saved with every checkpoint (`train_state.json`)."""

    step: int = 0
    batches_consumed: int = 0
    samples_seen: int = 0
    samples_failed: int = 0

    def state_dict(self) -> dict[str, int]:
        """Plain-data state."""
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore from `state_dict()`; a `StateFileError` when keys or types differ or a count is negative."""
        check_like(state, self.state_dict(), "train_state")
        negative = {k: v for k, v in state.items() if v < 0}
        if negative:
            raise StateFileError(f"train_state: negative counts {negative}.")
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class CheckpointedObjects:
    """What a checkpoint holds: the prepared objective, optimizer, LR scheduler, the run's progress and, for
    streamed data, this process's position in its streams (`data`: an object with `state_dict` /
    `load_state_dict` of plain data, stored as `data_state_<rank>.json`)."""

    objective: torch.nn.Module
    optimizer: Any
    scheduler: Any
    state: TrainState
    data: Any = None


def checkpoint_step(path: Path) -> int | None:
    """The step of a `checkpoint-<step>` folder name, or None for any other name."""
    match = _STEP_PATTERN.match(path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint folders under `<output_dir>/checkpoints`, oldest first (temporary and deleted ones excluded)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


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


# ------------------------------------------------------------------------------------------------- folders
def remove_folder(path: Path) -> None:
    """Delete a folder by renaming it to `.deleting-<name>` first, so that a half-deleted folder never keeps a
    name that looks complete."""
    if not path.exists():
        return
    doomed = path.with_name(f"{DELETING_PREFIX}{path.name}")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def publish_folder(tmp: Path, final: Path) -> None:
    """Move the complete folder `tmp` to `final`, replacing (then deleting) an existing `final`."""
    remove_folder(final)
    os.replace(tmp, final)


def remove_stale_folders(output_dir: str | os.PathLike) -> list[Path]:
    """Delete what interrupted writes left in `output_dir` and its `checkpoints/` (`.tmp-*`, `.deleting-*`)."""
    stale: list[Path] = []
    for root in (Path(output_dir), Path(output_dir) / "checkpoints"):
        if root.is_dir():
            stale += [p for p in root.iterdir() if p.name.startswith((TMP_PREFIX, DELETING_PREFIX))]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return stale


def _run_checked(accelerator: Accelerator, what: str, fn: Callable[[], Any], keep: str) -> Any:
    """
    Run `fn` on this process and agree with the others on whether every process succeeded: an `OSError` on any
    of them (a full disk) raises a [`CheckpointWriteError`] on all of them instead of leaving the others waiting.
    """
    result, failure = None, None
    try:
        result = fn()
    except (OSError, SafetensorError) as err:  # safetensors reports I/O errors as SafetensorError
        full = getattr(err, "errno", None) == errno.ENOSPC or f"os error {errno.ENOSPC})" in str(err)
        failure = f"{'no space left on device' if full else type(err).__name__}: {err}"
    failures = [f for f in gather_object([failure]) if f is not None]
    if failures:
        raise CheckpointWriteError(f"Writing {what} failed ({'; '.join(failures)}); {keep}.")
    return result


def _rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_layout(accelerator: Accelerator, objective: torch.nn.Module) -> Layout:
    """How a run's weights and optimizer are checkpointed (see `Layout`)."""
    if is_fsdp2(accelerator.unwrap_model(objective)):
        return "fsdp2"
    return "replicated" if accelerator.distributed_type in REPLICATED_TYPES else "engine"


# -------------------------------------------------------------------------------------------------- saving
def _write_main_files(
    accelerator: Accelerator, folder: Path, objects: CheckpointedObjects, layout: Layout
) -> list[str]:
    files: list[Path] = []
    if layout == "replicated":
        save_model(accelerator.unwrap_model(objects.objective), str(folder / MODEL_FILE))
        files += [folder / MODEL_FILE, *save_state_tree(objects.optimizer.state_dict(), folder / "optimizer")]
    files += save_state_tree(objects.scheduler.state_dict(), folder / "scheduler")
    files += save_state_tree(objects.state.state_dict(), folder / "train_state")
    if accelerator.scaler is not None:
        files += save_state_tree(accelerator.scaler.state_dict(), folder / "scaler")
    return [p.name for p in files]


def _write_parts(
    accelerator: Accelerator,
    folder: Path,
    objects: CheckpointedObjects,
    layout: Layout,
    shard_files: list[str],
) -> None:
    """Every process writes its RNG state (and data position); the main process the rest and, last, the
    manifest, which also lists `shard_files` (every process's FSDP2 shards)."""
    rank = accelerator.process_index
    save_state_tree(_rng_state(), folder / f"rng_state_{rank}")
    if objects.data is not None:
        save_state_tree(objects.data.state_dict(), folder / f"data_state_{rank}")
    if not accelerator.is_main_process:
        return
    files = _write_main_files(accelerator, folder, objects, layout) + list(shard_files)
    # Every RNG tree holds torch's state tensor, so every process wrote both of its files; a data position is
    # plain data (JSON only).
    for r in range(accelerator.num_processes):
        files += [p.name for p in state_files(folder / f"rng_state_{r}")]
        if objects.data is not None:
            files.append(state_files(folder / f"data_state_{r}")[0].name)
    manifest = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": objects.state.step,
        "num_processes": accelerator.num_processes,
        "layout": layout,
        "files": sorted(files),
        "engine_files": sorted(p.name for p in folder.iterdir() if p.name not in files)
        if layout == "engine"
        else [],
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def _write_engine_part(
    accelerator: Accelerator, folder: Path, objects: CheckpointedObjects, layout: Layout, what: str, keep: str
) -> list[str]:
    """The sharded weights and optimizer: every process's FSDP2 shards (their names, from every process), or
    another engine's `save_state` files (listed later as `engine_files`)."""
    if layout == "engine":
        accelerator.save_state(str(folder))
        accelerator.wait_for_everyone()
        return []
    if layout != "fsdp2":
        return []
    model = accelerator.unwrap_model(objects.objective)

    def write() -> list[str]:
        return [
            p.name for p in save_sharded_state(folder, accelerator.process_index, model, objects.optimizer)
        ]

    local = _run_checked(accelerator, what, write, keep)
    return [name for names in gather_object([local]) for name in names]


def save_checkpoint(
    accelerator: Accelerator, output_dir: str | os.PathLike, objects: CheckpointedObjects, limit: int | None
) -> Path:
    """
    Write `checkpoints/checkpoint-<step>` (see the module docstring) under a temporary name, rename it once every
    process has written its part, then delete the checkpoints older than the newest `limit`.

    Raises:
        CheckpointWriteError: on every process, when any of them could not write (the temporary folder is removed,
            earlier checkpoints are untouched).
    """
    root = Path(output_dir) / "checkpoints"
    step = objects.state.step
    final = root / f"{CHECKPOINT_PREFIX}{step}"
    tmp = root / f"{TMP_PREFIX}{CHECKPOINT_PREFIX}{step}"
    previous = list_checkpoints(output_dir)
    keep = (
        f"the last good checkpoint ({previous[-1]}) is kept" if previous else "no earlier checkpoint exists"
    )
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    layout = checkpoint_layout(accelerator, objects.objective)
    what = f"checkpoint {final}"
    try:
        shard_files = _write_engine_part(accelerator, tmp, objects, layout, what, keep)
        _run_checked(
            accelerator, what, lambda: _write_parts(accelerator, tmp, objects, layout, shard_files), keep
        )
    except CheckpointWriteError:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise

    def publish() -> None:
        if accelerator.is_main_process:
            publish_folder(tmp, final)
            for old in list_checkpoints(output_dir)[:-limit] if limit else []:
                remove_folder(old)

    _run_checked(accelerator, f"checkpoint {final}", publish, keep)
    return final


# ------------------------------------------------------------------------------------------------- loading
def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """
    The manifest of the checkpoint folder `path`, after checking that the folder holds exactly the files it lists.

    Raises:
        CheckpointError: no or an invalid `checkpoint.json` (e.g. a checkpoint of an older, pickle-based version), a
            listed file is missing, or the folder holds a file the manifest does not list.
    """
    path = Path(path)
    manifest_file = path / MANIFEST_NAME
    if not manifest_file.is_file():
        raise CheckpointError(
            f"{path} is not a checkpoint of this version of transformers_valor: it has no {MANIFEST_NAME} (older "
            "versions stored training state in pickle files, which are never loaded). Nothing was loaded."
        )
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        valid = manifest["format"] == CHECKPOINT_FORMAT and manifest["version"] == CHECKPOINT_VERSION
        listed = set(manifest["files"]) | set(manifest["engine_files"])
        int(manifest["step"]), int(manifest["num_processes"])
        # Manifests written before FSDP2 checkpoints existed have no layout: one copy of the weights.
        manifest.setdefault("layout", "replicated")
        valid = valid and manifest["layout"] in LAYOUTS
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{manifest_file} is not a valid checkpoint manifest ({err}).") from err
    if not valid:
        raise CheckpointError(
            f"{manifest_file}: unknown format {manifest['format']!r} v{manifest['version']} "
            f"(layout {manifest['layout']!r})."
        )
    present = {p.name for p in path.iterdir()} - {MANIFEST_NAME}
    unexpected, missing = sorted(present - listed), sorted(listed - present)
    if unexpected:
        raise CheckpointError(
            f"{path} holds files its {MANIFEST_NAME} does not list: {unexpected}. A checkpoint written by this "
            "version has none; the folder was altered (a pickle file placed there would run code if loaded). "
            "Nothing was loaded."
        )
    if missing:
        raise CheckpointError(f"{path} is incomplete: missing {missing}. Nothing was loaded.")
    return manifest


def _load_weights(accelerator: Accelerator, folder: Path, objects: CheckpointedObjects) -> None:
    try:
        load_model(accelerator.unwrap_model(objects.objective), str(folder / MODEL_FILE), strict=True)
    except (SafetensorError, RuntimeError, OSError) as err:
        raise CheckpointError(f"{folder / MODEL_FILE} does not fit the model being trained: {err}") from err
    optimizer_state = load_state_tree(folder / "optimizer")
    if not isinstance(optimizer_state, dict) or set(optimizer_state) != {"state", "param_groups"}:
        raise StateFileError("optimizer: expected the keys ['param_groups', 'state'].")
    check_like(optimizer_state["param_groups"], objects.optimizer.state_dict()["param_groups"], "optimizer")
    try:
        objects.optimizer.load_state_dict(optimizer_state)
    except (KeyError, ValueError, RuntimeError) as err:
        raise StateFileError(f"optimizer state does not fit the optimizer: {err}") from err


def load_checkpoint(accelerator: Accelerator, path: str | os.PathLike, objects: CheckpointedObjects) -> None:
    """
    Restore weights, optimizer, LR scheduler, progress, the grad scaler and this process' RNG states from the
    checkpoint folder `path`, written by [`save_checkpoint`] with the same number of processes.

    Raises:
        CheckpointError: naming the folder and the file, when the folder fails `read_manifest`, was written by
            another number of processes, or a file does not hold what the run needs; nothing is unpickled.
    """
    folder = Path(path)
    manifest = read_manifest(folder)
    if manifest["num_processes"] != accelerator.num_processes:
        raise CheckpointError(
            f"{folder} was written by {manifest['num_processes']} process(es) but this run has "
            f"{accelerator.num_processes}; resume with the same number (data order and RNG streams are per process)."
        )
    layout = checkpoint_layout(accelerator, objects.objective)
    if manifest["layout"] != layout:
        raise CheckpointError(
            f"{folder} holds {manifest['layout']} weights and optimizer state but this run stores them as "
            f"{layout} ({accelerator.distributed_type.name}); resume with the accelerate config that wrote it."
        )
    try:
        if layout == "engine":
            accelerator.load_state(str(folder))
        elif layout == "fsdp2":
            load_sharded_state(
                folder,
                accelerator.process_index,
                accelerator.unwrap_model(objects.objective),
                objects.optimizer,
            )
        else:
            _load_weights(accelerator, folder, objects)
        scheduler_state = load_state_tree(folder / "scheduler")
        check_like(scheduler_state, objects.scheduler.state_dict(), "scheduler")
        objects.scheduler.load_state_dict(scheduler_state)
        objects.state.load_state_dict(load_state_tree(folder / "train_state"))
        if accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(load_state_tree(folder / "scaler"))
        rng = load_state_tree(folder / f"rng_state_{accelerator.process_index}")
        check_like(rng, _rng_state(), f"rng_state_{accelerator.process_index}")
        _set_rng_state(rng)
        if objects.data is not None:
            objects.data.load_state_dict(load_state_tree(folder / f"data_state_{accelerator.process_index}"))
    except StateFileError as err:
        raise CheckpointError(f"Cannot resume from {folder}: {err}") from err
    if objects.state.step != manifest["step"]:
        raise CheckpointError(
            f"{folder}: train_state says step {objects.state.step}, the manifest {manifest['step']}."
        )


# --------------------------------------------------------------------------------------------- final model
def save_final_model(
    accelerator: Accelerator,
    objective,
    processor: ValorProcessor,
    final_dir: Path,
    card: dict[str, Any] | None = None,
) -> Path:
    """
    `save_pretrained` of the task's model inside the prepared training objective (full state dict gathered under
    FSDP/DeepSpeed) and of the processor, e.g. a `ValorForRetrieval` folder for retrieval fine-tuning. Written to
    `.tmp-<name>` beside `final_dir` and renamed once complete, replacing an earlier `final_dir`. `card`: the
    `create_model_card` arguments of the run (its datasets), for the folder's README.md.
    """
    final_dir = Path(final_dir)
    tmp = final_dir.with_name(f"{TMP_PREFIX}{final_dir.name}")
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(objective)
    # A collective: every process gives its shards, the main process gets the whole weights (on the CPU).
    state_dict = full_state_dict(unwrapped) if is_fsdp2(unwrapped) else accelerator.get_state_dict(objective)

    def write() -> None:
        if not accelerator.is_main_process:
            return
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            model = unwrapped.model
            weights = {k[len("model.") :]: v for k, v in state_dict.items() if k.startswith("model.")}
            model.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
            if card is not None:
                create_model_card(model, tmp, **card)
            processor.save_pretrained(tmp)
            publish_folder(tmp, final_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    _run_checked(accelerator, f"the final model {final_dir}", write, "the checkpoints are kept")
    return final_dir
