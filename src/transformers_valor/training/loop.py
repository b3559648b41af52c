"""The Accelerate training loop shared by pretraining and the downstream tasks.

[`train`] builds the run (processor, model, objective, data, optimizer, schedule), restores a checkpoint when
asked, and runs [`TrainingLoop`]: gradient accumulation, gradient clipping, the NaN guard, undecodable-sample
accounting, `metrics.jsonl`, tracker logs, the progress bar and atomic checkpoints; it ends with `save_pretrained`
of the task's model and the processor. It runs single-process, DDP, FSDP or DeepSpeed per `accelerate launch`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import (
    DistributedDataParallelKwargs,
    DistributedType,
    ProjectConfiguration,
    gather_object,
    set_seed,
)

from ..compilation import compile_valor
from ..data.collator import model_inputs, truncate_batch
from ..processing_valor import ValorProcessor
from .checkpointing import (
    CheckpointedObjects,
    TrainState,
    load_checkpoint,
    remove_stale_folders,
    save_checkpoint,
    save_final_model,
)
from .config import LoopArguments, RunConfig
from .cpu_memory import keep_freed_cpu_memory
from .data import MapStyleData, StreamingData, build_training_data
from .distributed import prepare_objective, resolve_engine, shard_objective, unsharded
from .model_factory import TASK_MODEL_CLASSES, build_model
from .objectives import ObjectiveOutput, TrainingObjective, build_objective
from .optimization import build_optimizer, build_scheduler
from .run_files import FINAL_DIR, MetricsLog, delete_previous_run, prepare_output_dir

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised when the loss is NaN or infinite; the message names the step and the batch's sample ids."""


class DecodeFailureError(RuntimeError):
    """Raised when more than `data.max_failed_share` of the samples could not be decoded."""


@dataclass
class TrainResult:
    """What [`train`] returns: the final step, the per-step losses and where things were written."""

    step: int
    losses: list[float]
    final_dir: Path | None
    last_checkpoint: Path | None


def create_accelerator(config: RunConfig) -> Accelerator:
    """
    An Accelerator set up from the config (accumulation, precision, trackers, project dir).

    Fine-tuning always runs DDP with `find_unused_parameters=True`: retrieval leaves the decoder's cross-attention
    unused, captioning and QA the MGA projections, weight MLPs and temperature.
    """
    args = config.training
    kwargs: dict[str, Any] = {}
    if args.mixed_precision is not None:
        kwargs["mixed_precision"] = args.mixed_precision
    find_unused = args.find_unused_parameters
    if config.task != "pretrain" and not find_unused:
        logger.warning(
            "task %r leaves parameters unused: DDP's find_unused_parameters is turned on.", config.task
        )
        find_unused = True
    return Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=list(args.report_to) or None,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")
        ),
        # Without a GPU, run on CPU (with gloo when launched with several processes).
        cpu=not torch.cuda.is_available(),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)],
        **kwargs,
    )


def num_training_steps(args: LoopArguments, batches_per_epoch: int) -> int:
    """Optimizer steps of the run: `max_steps`, or `num_epochs` epochs of `batches_per_epoch` micro-batches."""
    if args.max_steps is not None:
        return args.max_steps
    return max(1, math.ceil(args.num_epochs * batches_per_epoch / args.gradient_accumulation_steps))


class _Averages:
    """Running sums of named values, read back as means over the number of `add` calls."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, values: dict[str, float]) -> None:
        """Add one set of values (keys may differ between calls)."""
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1

    def means(self) -> dict[str, float]:
        """Every value's sum divided by the number of `add` calls."""
        return {key: value / self.count for key, value in self.sums.items()}

    def reset(self) -> None:
        """Start again from nothing."""
        self.sums, self.count = {}, 0


class TrainingLoop:
    """
    The step logic of [`train`] on prepared objects: one call of [`run`] trains from `state.step` to
    `total_steps` (or `stop_after_steps`), one micro-batch at a time.

    Per micro-batch: decode failures are counted on every process (the run stops past `data.max_failed_share`)
    and the batch is cut to the smallest kept size, so that every process gathers equal shapes; the objective's
    loss is checked for NaN/inf on every process, back-propagated, clipped and stepped. Per optimizer step: the
    loss components are averaged over micro-batches and processes into `metrics.jsonl`, tracker logs every
    `log_every` steps, and a checkpoint when due.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        config: RunConfig,
        objective: TrainingObjective,
        optimizer: torch.optim.Optimizer,
        scheduler,
        state: TrainState,
        total_steps: int,
        stop_after_steps: int | None = None,
        data: MapStyleData | StreamingData | None = None,
    ):
        self.accelerator, self.config, self.objective = accelerator, config, objective
        self.data = data
        self.optimizer, self.scheduler, self.state = optimizer, scheduler, state
        self.total_steps, self.stop_after_steps = total_steps, stop_after_steps
        self.output_dir = Path(config.training.output_dir)
        self.metrics = MetricsLog(self.output_dir)
        self.losses: list[float] = []
        self.last_checkpoint: Path | None = None
        self.stopped = False
        self.step_values = _Averages()  # the micro-batches of the current optimizer step
        self.window = _Averages()  # the optimizer steps since the last tracker log
        self.samples_in_window = 0
        self.window_start = time.perf_counter()
        self.progress = None

    def run(self) -> None:
        """Train until `total_steps` (or `stop_after_steps`), continuing the data where `state` says."""
        self.objective.train()
        if self.config.training.progress_bar and self.accelerator.is_local_main_process:
            from tqdm.auto import tqdm

            self.progress = tqdm(
                total=self.total_steps,
                initial=self.state.step,
                desc=self.config.task,
                unit="step",
                dynamic_ncols=True,
            )
        if self.state.step < self.total_steps:
            for batch in self.data.batches(self.accelerator, self.state.batches_consumed):
                self.state.batches_consumed += 1
                self.data.record(batch)
                if self._train_micro_batch(batch) and self._end_optimizer_step():
                    break
        if self.progress is not None:
            self.progress.close()

    def _train_micro_batch(self, batch: dict[str, Any]) -> bool:
        """Forward, backward and (at the end of an accumulation) optimizer step; whether a step ended."""
        size = self._account_for_failures(batch)
        if size == 0:
            return False
        if len(batch["sample_ids"]) > size:
            batch = truncate_batch(batch, size)
        device = self.accelerator.device
        inputs = {
            k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in model_inputs(batch).items()
        }
        inputs["references"] = batch.get("references")
        with self.accelerator.accumulate(self.objective):
            output = self.objective(inputs)
            self._check_finite(output.loss, batch)
            self._backward_and_step(output.loss)
        self.step_values.add({k: float(v) for k, v in _loss_components(output).items()})
        self.samples_in_window += size * self.accelerator.num_processes
        return self.accelerator.sync_gradients

    def _account_for_failures(self, batch: dict[str, Any]) -> int:
        """Count the batch's undecodable samples on every process; returns the smallest kept batch size."""
        accelerator, state, data = self.accelerator, self.state, self.config.data
        kept = len(batch["sample_ids"])
        # Every process must agree on the batch size (the MGA gather) and on stopping.
        stats = accelerator.gather(
            torch.tensor([[len(batch["failures"]), batch["num_items"], kept]], device=accelerator.device)
        )
        failed, seen, smallest = int(stats[:, 0].sum()), int(stats[:, 1].sum()), int(stats[:, 2].min())
        state.samples_failed += failed
        state.samples_seen += seen
        if failed and accelerator.is_main_process:
            logger.warning(
                "step %d: skipped %d undecodable sample(s) (%d of %d so far): %s",
                state.step + 1,
                failed,
                state.samples_failed,
                state.samples_seen,
                "; ".join(str(f) for f in batch["failures"]),
            )
        if (
            state.samples_seen >= data.min_samples_for_failure_check
            and state.samples_failed > data.max_failed_share * state.samples_seen
        ):
            raise DecodeFailureError(
                f"{state.samples_failed} of {state.samples_seen} samples ({state.samples_failed / state.samples_seen:.1%}) "
                f"could not be decoded, more than data.max_failed_share={data.max_failed_share:.1%}; check the "
                "logged paths (missing or damaged video files, or a wrong video_dir / file extension)."
            )
        return smallest

    def _check_finite(self, loss: torch.Tensor, batch: dict[str, Any]) -> None:
        """Save the last good state and raise NonFiniteLossError (on every process) when a loss is NaN/inf."""
        accelerator = self.accelerator
        finite = accelerator.reduce(torch.isfinite(loss.detach()).float().reshape(1), "sum")
        if int(finite.item()) == accelerator.num_processes:
            return
        sample_ids = [sid for ids in gather_object([batch["sample_ids"]]) for sid in ids]
        # No update has been applied for this step yet: the checkpoint holds the state after the last good one.
        path = save_checkpoint(accelerator, self.output_dir, self.checkpointed(), None)
        raise NonFiniteLossError(
            f"Non-finite loss ({float(loss.detach()):.4g} on process {accelerator.process_index}) at step "
            f"{self.state.step + 1}, dataset {batch['dataset']!r}; batch sample ids: {sample_ids}. The last good "
            f"state (after step {self.state.step}) is saved in {path}."
        )

    def _backward_and_step(self, loss: torch.Tensor) -> None:
        accelerator, max_norm = self.accelerator, self.config.optimizer.max_grad_norm
        accelerator.backward(loss)
        if accelerator.sync_gradients and max_norm:
            accelerator.clip_grad_norm_(self.objective.parameters(), max_norm)
        self.optimizer.step()
        # The scheduler is stepped once per optimizer step here (not per process, as a prepared one would be).
        if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
            self.scheduler.step()
        self.optimizer.zero_grad()

    def _end_optimizer_step(self) -> bool:
        """Record, log and maybe checkpoint the step just taken; whether training stops here."""
        self.state.step += 1
        values = self._step_means_over_processes()
        self.losses.append(values["loss"])
        self.window.add(values)
        if self.accelerator.is_main_process:
            self.metrics.append({"step": self.state.step, **values, "lr": self.scheduler.get_last_lr()[0]})
        if self.state.step % self.config.training.log_every == 0 or self.state.step == self.total_steps:
            self._log_window()
        if self.progress is not None:
            self.progress.update(1)
        done = self.state.step >= self.total_steps
        stop = self.stop_after_steps is not None and self.state.step >= self.stop_after_steps
        every = self.config.training.checkpoint_every
        if (every and self.state.step % every == 0) or done or stop:
            self.last_checkpoint = save_checkpoint(
                self.accelerator, self.output_dir, self.checkpointed(), self.config.training.save_total_limit
            )
        self.stopped = done or stop
        return self.stopped

    def checkpointed(self) -> CheckpointedObjects:
        """The objects a checkpoint of this loop holds."""
        streamed = self.data if isinstance(self.data, StreamingData) else None
        return CheckpointedObjects(self.objective, self.optimizer, self.scheduler, self.state, streamed)

    def _step_means_over_processes(self) -> dict[str, float]:
        """The step's loss components: mean over its micro-batches, then over processes."""
        local = self.step_values.means()
        self.step_values.reset()
        keys = sorted(local)
        mean = self.accelerator.reduce(
            torch.tensor([local[k] for k in keys], device=self.accelerator.device), "mean"
        )
        return dict(zip(keys, mean.tolist()))

    def _log_window(self) -> None:
        """Tracker logs (and the progress bar's postfix) averaged over the steps since the last log."""
        elapsed = time.perf_counter() - self.window_start
        logs = {f"train/{k}": v for k, v in self.window.means().items()}
        logs["train/learning_rate"] = self.scheduler.get_last_lr()[0]
        logs["train/samples_per_second"] = self.samples_in_window / max(elapsed, 1e-9)
        objective = self.accelerator.unwrap_model(self.objective)
        # Under FSDP2 the temperature is sharded outside the forward: every process gathers it here.
        with unsharded(objective):
            logs["train/temperature"] = float(1.0 / objective.valor.get_logit_scale().detach())
        logs["train/decode_failures"] = self.state.samples_failed
        self.accelerator.log(logs, step=self.state.step)
        if self.progress is not None:
            self.progress.set_postfix(
                loss=f"{logs['train/loss']:.3f}",
                mga=f"{logs.get('train/mga', float('nan')):.3f}",
                mgc=f"{logs.get('train/mgc', float('nan')):.3f}",
                samples_s=f"{logs['train/samples_per_second']:.1f}",
            )
        self.window.reset()
        self.samples_in_window = 0
        self.window_start = time.perf_counter()


def _loss_components(output: ObjectiveOutput) -> dict[str, torch.Tensor]:
    """The logged parts of a micro-batch's loss: the loss itself and the objective's components."""
    return {"loss": output.loss.detach(), **{k: v.detach() for k, v in output.components.items()}}


def _prepare_deepspeed(accelerator: Accelerator, config: RunConfig) -> None:
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
    if ds_config.get("train_micro_batch_size_per_gpu") in (None, "auto"):
        # DeepSpeed reads the micro-batch size from a prepared DataLoader; ours is per-process by design.
        ds_config["train_micro_batch_size_per_gpu"] = config.data.per_device_batch_size


def _build_objective(config: RunConfig, model, data, processor: ValorProcessor) -> TrainingObjective:
    """The task's objective; SCST's CIDEr-D document frequencies come from every training reference."""
    references = data.references() if config.scst.enabled else None
    return build_objective(config.task, model, config.scst, references, processor.tokenizer)


def _prepare_output_dir(accelerator: Accelerator, config: RunConfig, resume: str | None) -> Path | None:
    """Check `output_dir` on every process (see `run_files.prepare_output_dir`), then let the main process clean
    it and write `train_config.yaml`; returns the checkpoint to resume from."""
    output_dir = Path(config.training.output_dir)
    checkpoint, delete_previous = prepare_output_dir(output_dir, resume, config.training.overwrite_output_dir)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_folders(output_dir)
        if delete_previous:
            delete_previous_run(output_dir)
        (output_dir / "train_config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    accelerator.wait_for_everyone()
    return checkpoint


def _load_processor(source: str) -> ValorProcessor:
    try:
        return ValorProcessor.from_pretrained(source)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"`model.processor`: {err}") from err


def train(
    config: RunConfig,
    resume_from_checkpoint: str | None = None,
    stop_after_steps: int | None = None,
    accelerator: Accelerator | None = None,
    release_processes: bool = True,
) -> TrainResult:
    """
    Pretrain or fine-tune VALOR as configured (`config.task`), under Accelerate (single process, DDP, FSDP or
    DeepSpeed per `accelerate launch`).

    Args:
        config ([`RunConfig`]): the run.
        resume_from_checkpoint (`str`, *optional*): a checkpoint folder or `"latest"`; model, optimizer,
            scheduler, RNG states and progress are restored and the data continues with the next batch the
            uninterrupted run would have used.
        stop_after_steps (`int`, *optional*): save a checkpoint and return after this many optimizer steps
            (time-boxed jobs, tests of preemption); the final model is then not written.
        accelerator (`Accelerator`, *optional*): an existing one (default: [`create_accelerator`]).
        release_processes (`bool`, defaults to `True`): tear the process group down at the end; `False` keeps it
            for work that follows on every process (the distributed evaluation of `cli.run_finetuning`).

    Returns:
        [`TrainResult`]. Writes `<output_dir>/metrics.jsonl` (one line per step), checkpoints, tracker logs and,
        when training completes, `<output_dir>/final` (model + processor, `save_pretrained` format).

    Raises:
        NonFiniteLossError: the loss became NaN/inf (after a checkpoint of the last good state is written).
        DecodeFailureError: too many undecodable samples.
        OutputDirError: `output_dir` holds another run (see `run_files.prepare_output_dir`).
        CheckpointError: the checkpoint to resume from is not one this version wrote, or was altered.
        CheckpointWriteError: a checkpoint or the final model could not be written (e.g. a full disk).
    """
    args = config.training
    accelerator = accelerator or create_accelerator(config)
    if args.keep_freed_cpu_memory and accelerator.device.type == "cpu":
        keep_freed_cpu_memory()
    set_seed(args.seed)
    checkpoint = _prepare_output_dir(accelerator, config, resume_from_checkpoint)

    processor = _load_processor(config.model.processor)
    model = build_model(config.model, processor, TASK_MODEL_CLASSES[config.task])
    data = build_training_data(config, processor, model.config, accelerator)
    objective = _build_objective(config, model, data, processor)
    engine = resolve_engine(accelerator)
    logger.info("Distributed engine: %s", engine.describe())
    # Before the optimizer is built: FSDP2's fully_shard replaces the parameters (`model` stays the same module).
    objective = shard_objective(accelerator, engine, objective)
    if args.torch_compile:
        # In place and after FSDP2's fully_shard (compiling sharded modules, as torch recommends); parameter
        # names, checkpoints and DDP wrapping are those of the eager model.
        compile_valor(model)
    total_steps = num_training_steps(args, data.batches_per_epoch)
    # Parameter names (weight decay, learning-rate prefixes) are the task model's, e.g. `valor.vision_model.*`.
    optimizer = build_optimizer(model, config.optimizer)
    scheduler = build_scheduler(optimizer, config.optimizer, total_steps)
    _prepare_deepspeed(accelerator, config)
    objective, optimizer = prepare_objective(accelerator, engine, objective, optimizer)
    state = TrainState()
    loop = TrainingLoop(
        accelerator, config, objective, optimizer, scheduler, state, total_steps, stop_after_steps, data
    )
    if checkpoint is not None:
        load_checkpoint(accelerator, checkpoint, loop.checkpointed())
        if accelerator.is_main_process:
            MetricsLog(args.output_dir).truncate(state.step)
        logger.info("Resumed from %s at step %d", checkpoint, state.step)
    if accelerator.is_main_process:
        accelerator.init_trackers(args.run_name, config=config.to_flat_dict())

    loop.run()
    final_dir = None
    if state.step >= total_steps:
        card = {"datasets": [d.name for d in config.datasets], "tags": [config.task]}
        final_dir = save_final_model(
            accelerator, objective, processor, Path(args.output_dir) / FINAL_DIR, card
        )
    result = TrainResult(
        step=state.step, losses=loop.losses, final_dir=final_dir, last_checkpoint=loop.last_checkpoint
    )
    # The wrapped objective goes first: DDP's reducer holds the process group, and freeing it after the group is
    # destroyed can wait forever on the group's threads.
    del loop, objective, optimizer
    accelerator.free_memory()
    if release_processes:
        # Ends the trackers and tears the process group down (gloo aborts processes that exit with it alive).
        accelerator.end_training()
    else:
        for tracker in accelerator.trackers:
            tracker.finish()
    return result
