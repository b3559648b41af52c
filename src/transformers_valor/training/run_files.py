"""What a run keeps in its `output_dir` besides the checkpoints: the guard against mixing two runs, and
`metrics.jsonl` (one line per optimizer step, also across a kill and a resume).

- [`prepare_output_dir`] decides, on every process and before anything is written, whether the run starts fresh,
  resumes, or must stop: an `output_dir` that already holds a run (`metrics.jsonl`, `final/` or a checkpoint) is
  refused unless the run resumes from a checkpoint or `training.overwrite_output_dir` is set (which deletes
  that run's `checkpoints/`, `final/` and `metrics.jsonl`). `--resume_from_checkpoint latest` in an `output_dir`
  holding no run starts fresh with a warning (the first launch of a job that is always started with `latest`);
  `latest` where a run exists but has no checkpoint is an error.
- [`MetricsLog`] appends one JSON row per step; on resume it cuts the file back to the checkpoint's step, so the
  steps between that checkpoint and the kill are not logged twice.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from .checkpointing import list_checkpoints, remove_folder, resolve_checkpoint

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
FINAL_DIR = "final"


class OutputDirError(FileExistsError):
    """`output_dir` holds another run and the call neither resumes it nor asks to overwrite it."""


def previous_run_files(output_dir: str | os.PathLike) -> list[str]:
    """What in `output_dir` belongs to an earlier run: `metrics.jsonl`, `final/`, `checkpoints/checkpoint-*`."""
    root = Path(output_dir)
    found = [name for name in (METRICS_FILE, FINAL_DIR) if (root / name).exists()]
    return found + [f"checkpoints/{p.name}" for p in list_checkpoints(root)]


def prepare_output_dir(
    output_dir: str | os.PathLike, resume_from_checkpoint: str | None, overwrite: bool
) -> tuple[Path | None, bool]:
    """
    The checkpoint to resume from (None for a fresh start) and whether an earlier run must be deleted first.
    Only reads the file system; call it on every process, then let the main process act on the answer.

    Raises:
        OutputDirError: `output_dir` holds a run, nothing is resumed and `overwrite` is not set.
        FileNotFoundError: `resume_from_checkpoint` is a path that is not a folder.
    """
    checkpoint = resolve_checkpoint(output_dir, resume_from_checkpoint)
    if checkpoint is not None:
        return checkpoint, False
    existing = previous_run_files(output_dir)
    if existing and not overwrite:
        resume_hint = (
            "it has no checkpoint to resume from"
            if resume_from_checkpoint
            else "resume it with `--resume_from_checkpoint latest`"
        )
        raise OutputDirError(
            f"output_dir {output_dir} already holds a run ({', '.join(existing)}); {resume_hint}, or set "
            "`training.overwrite_output_dir: true` (`--overwrite_output_dir`) to delete it, or use another "
            "`training.output_dir`."
        )
    if resume_from_checkpoint == "latest":
        logger.warning(
            "--resume_from_checkpoint latest: no checkpoint in %s; starting a fresh run.", output_dir
        )
    return None, bool(existing)


def delete_previous_run(output_dir: str | os.PathLike) -> None:
    """Delete an earlier run's `checkpoints/`, `final/` and `metrics.jsonl` (`overwrite_output_dir`)."""
    root = Path(output_dir)
    for checkpoint in list_checkpoints(root):
        remove_folder(checkpoint)
    remove_folder(root / FINAL_DIR)
    (root / METRICS_FILE).unlink(missing_ok=True)
    logger.warning(
        "overwrite_output_dir: deleted the earlier run's checkpoints, final model and metrics in %s", root
    )


class MetricsLog:
    """`<output_dir>/metrics.jsonl`: one JSON object per optimizer step, with its `step`."""

    def __init__(self, output_dir: str | os.PathLike):
        self.path = Path(output_dir) / METRICS_FILE

    def append(self, row: dict[str, Any]) -> None:
        """Add the row of one step."""
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    def truncate(self, step: int) -> int:
        """
        Keep the rows of steps `1..step` only (what a checkpoint at `step` has seen), dropping the rows of later
        steps and a line cut short by a kill; the file is replaced atomically. Returns the rows kept.
        """
        if not self.path.is_file():
            return 0
        kept, dropped, torn = [], 0, 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                row_step = int(row["step"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                torn += 1
                continue
            if row_step <= step:
                kept.append(line)
            else:
                dropped += 1
        tmp = self.path.with_name(f".{self.path.name}.partial")
        tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        os.replace(tmp, self.path)
        if dropped or torn:
            logger.warning(
                "%s: resuming at step %d, dropped %d row(s) of later steps and %d unreadable line(s).",
                self.path,
                step,
                dropped,
                torn,
            )
        return len(kept)
