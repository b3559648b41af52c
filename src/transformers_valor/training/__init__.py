"""VALOR training with Hugging Face Accelerate: one loop for pretraining and the downstream tasks.

The YAML's `task:` (`pretrain`, `retrieval`, `captioning`, `qa`) picks the model class and the objective; data,
optimizer, schedule, checkpoints, exact resume and the NaN guard are shared. One concern per module:

- `config`: the YAML schema ([`RunConfig`] and its sections) and [`load_config`] (docs/pretraining.md);
- `model_factory`: [`build_model`] (from scratch, a VALOR checkpoint, or single-modality encoders) and the
  processor/model consistency check;
- `optimization`: [`build_optimizer`] (AdamW, VALOR's betas and weight decay) and [`build_scheduler`];
- `data`: [`build_training_data`] (the dataset mix, map-style with its decoded cache and per-process sampler, or
  streamed from WebDataset shards; the collator);
- `objectives`: every task's loss as an `nn.Module` wrapping its model (what DDP wraps);
- `scst`: self-critical sequence training helpers for captioning;
- `distributed`: the distributed engine a launch asked for against what runs, FSDP2 applied by the loop on CPU;
- `safe_state`: training state as JSON + safetensors (nothing pickled);
- `sharded_state`: each process's FSDP2 shards of weights and optimizer (safetensors + JSON);
- `checkpointing`: atomic checkpoints of non-executable files, exact resume, the final `save_pretrained` folder;
- `run_files`: the `output_dir` guard (no two runs mixed) and `metrics.jsonl` (one line per step);
- `loop`: [`train`] and the step logic;
- `evaluation`: test-set evaluation of retrieval, captioning and QA (`evaluate_task`);
- `cli`: the command lines of `examples/pretrain.py`, `examples/finetune_*.py`, `examples/evaluate_finetuned.py`.
"""

from .checkpointing import (
    CheckpointError,
    CheckpointWriteError,
    TrainState,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    save_final_model,
)
from .config import (
    TASKS,
    DataArguments,
    LoopArguments,
    ModelArguments,
    OptimizerArguments,
    RunConfig,
    Task,
    apply_overrides,
    config_from_dict,
    load_config,
)
from .data import MapStyleData, StreamingData, build_training_data
from .distributed import DistributedEngineError
from .loop import DecodeFailureError, NonFiniteLossError, TrainingLoop, TrainResult, create_accelerator, train
from .model_factory import (
    TASK_MODEL_CLASSES,
    build_model,
    check_processor_matches_model,
    sync_text_config_with_tokenizer,
)
from .objectives import (
    CaptioningObjective,
    ObjectiveOutput,
    PretrainingObjective,
    RetrievalObjective,
    SCSTObjective,
    TrainingObjective,
    build_objective,
)
from .optimization import build_optimizer, build_scheduler
from .run_files import OutputDirError
from .scst import SCSTArguments, scored_token_mask, scst_rewards, sequence_log_probs

__all__ = [
    "TASKS",
    "TASK_MODEL_CLASSES",
    "CaptioningObjective",
    "CheckpointError",
    "CheckpointWriteError",
    "DataArguments",
    "DecodeFailureError",
    "DistributedEngineError",
    "LoopArguments",
    "MapStyleData",
    "ModelArguments",
    "NonFiniteLossError",
    "ObjectiveOutput",
    "OptimizerArguments",
    "OutputDirError",
    "PretrainingObjective",
    "RetrievalObjective",
    "RunConfig",
    "SCSTArguments",
    "SCSTObjective",
    "StreamingData",
    "Task",
    "TrainResult",
    "TrainState",
    "TrainingLoop",
    "TrainingObjective",
    "apply_overrides",
    "build_training_data",
    "build_model",
    "build_objective",
    "build_optimizer",
    "build_scheduler",
    "check_processor_matches_model",
    "config_from_dict",
    "create_accelerator",
    "list_checkpoints",
    "load_checkpoint",
    "load_config",
    "resolve_checkpoint",
    "save_checkpoint",
    "save_final_model",
    "scored_token_mask",
    "scst_rewards",
    "sequence_log_probs",
    "sync_text_config_with_tokenizer",
    "train",
]
