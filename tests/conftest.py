"""Pytest configuration: make tests/helpers.py importable and keep every test offline and deterministic."""

import os
import signal
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A synthetic corpus of 8 training and 4 test clips (32 px, 4 frames, 1 s of 16 kHz audio), made once."""
    from transformers_valor.data.synthetic import generate_corpus

    root = tmp_path_factory.mktemp("tiny_corpus")
    generate_corpus(root, num_train=8, num_test=4, seed=0, image_size=32, fps=4, duration=1.0, num_workers=1)
    return root


@pytest.fixture(scope="session")
def tiny_shards(tiny_corpus, tmp_path_factory):
    """The 8 training clips of `tiny_corpus` packed into 4 WebDataset shards of 2 (`data.shards`)."""
    from transformers_valor.data.shards import main

    out = tmp_path_factory.mktemp("tiny_shards") / "train"
    main(
        [
            "--path",
            str(tiny_corpus),
            "--output",
            str(out),
            "--name",
            "tiny",
            "--samples_per_shard",
            "2",
            "--no_progress",
        ]
    )
    return out


@pytest.fixture(scope="session")
def tiny_processor_dir(tiny_corpus, tmp_path_factory):
    """A saved ValorProcessor for `tiny_corpus`: WordPiece vocabulary trained on its captions, 2 frames of
    32 px, one audio clip of 32 mel bins x 64 frames."""
    from transformers_valor import ValorFeatureExtractor, ValorProcessor, ValorVideoProcessor
    from transformers_valor.data.synthetic import load_metadata
    from transformers_valor.data.vocab import train_wordpiece_tokenizer

    root = tmp_path_factory.mktemp("tiny_processor")
    texts = [c for row in load_metadata(tiny_corpus / "train") for c in row["captions"]]
    processor = ValorProcessor(
        tokenizer=train_wordpiece_tokenizer(texts, root / "vocab", vocab_size=200),
        video_processor=ValorVideoProcessor(num_frames=2, size=32),
        feature_extractor=ValorFeatureExtractor(
            sampling_rate=16000, num_mel_bins=32, clip_length=64, num_clips=1
        ),
        max_text_length=20,
    )
    processor.save_pretrained(root)
    return root


# ------------------------------------------------------------------------------------------------ training runs
# Trained once per session and read by several test files (tests/test_training_*.py): training dominates the
# suite's cost, so every assertion that only needs a finished run reads one of these.


@pytest.fixture(scope="session")
def pretraining_run(tiny_corpus, tiny_processor_dir, tmp_path_factory):
    """20 pretraining steps on the tiny corpus, decoding every batch (random frames, clips, captions and masks),
    with the TensorBoard tracker and a checkpoint at step 15. Returns `(TrainResult, config values)`."""
    from training_helpers import reset_accelerate, tiny_run
    from transformers_valor.training import config_from_dict, train

    values = tiny_run(
        tiny_corpus,
        tiny_processor_dir,
        tmp_path_factory.mktemp("pretraining_run"),
        optimizer={"learning_rate": 3e-3},
        training={"report_to": ["tensorboard"], "checkpoint_every": 15},
    )
    result = train(config_from_dict(values))
    reset_accelerate()
    return result, values


@pytest.fixture(scope="session")
def retrieval_run(tiny_corpus, tiny_processor_dir, tmp_path_factory):
    """`examples/finetune_retrieval.py --config run.yaml` in this process: 60 MGA steps on `tva` (no dropout, the
    whole corpus per batch, decoded cache), then evaluation on the test split (`tv`, `ta`, `tva`) and on its
    audio alone. The YAML says `task: pretrain`; the script sets `retrieval`. Returns `(output_dir, config file)`."""
    import runpy

    import yaml

    from training_helpers import REPO, no_dropout_model_config, reset_accelerate, tiny_run

    root = tmp_path_factory.mktemp("retrieval_run")
    test_set = {"name": "test", "path": str(tiny_corpus), "split": "test", "num_frames": 2}
    values = tiny_run(
        tiny_corpus,
        tiny_processor_dir,
        root / "run",
        task="pretrain",
        model={"processor": str(tiny_processor_dir), "config": no_dropout_model_config()},
        datasets=[{"name": "tiny", "path": str(tiny_corpus), "num_frames": 2, "contrastive_groups": ["tva"]}],
        data={"per_device_batch_size": 8, "cache_decoded": True, "cache_num_workers": 0},
        optimizer={"learning_rate": 1e-3, "warmup_steps": 0},
        training={"max_steps": 60},
        evaluation={
            "datasets": [
                {**test_set, "contrastive_groups": ["tv", "ta", "tva"]},
                {**test_set, "name": "test_audio", "modality": "audio"},
            ],
            "batch_size": 3,
            "max_block_elements": 64,
        },
    )
    config = root / "retrieval.yaml"
    config.write_text(yaml.safe_dump(values))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["finetune_retrieval.py", "--config", str(config)])
        runpy.run_path(str(REPO / "examples" / "finetune_retrieval.py"), run_name="__main__")
    reset_accelerate()
    return root / "run", config


@pytest.fixture(scope="session")
def ddp_runs(tiny_corpus, tiny_processor_dir, tiny_shards, tmp_path_factory):
    """Every two-process check in ONE `torchrun --nproc_per_node 2` launch of tests/distributed_training_worker.py
    (gloo on the CPU): the pretraining objective's gradients, `examples/pretrain.py`, `finetune_retrieval.py`
    (groups `tva` + `tv`, distributed evaluation), the same pretraining and retrieval sharded by FSDP2 (the
    shipped accelerate config; pretraining also stopped and resumed), `caption_videos.py` over the test clips and a
    damaged file, one bf16 FSDP2 step, pretraining streamed from shards (uninterrupted and resumed) and
    `finetune_captioning.py` (SCST, distributed evaluation). Returns the work folder with their outputs."""
    import json
    import subprocess

    import yaml

    from training_helpers import (
        CAPTION_VIDEOS_SETTINGS,
        ENCODE_VIDEOS_SETTINGS,
        subprocess_env,
        tiny_generator,
        tiny_run,
        torchrun_command,
    )
    from transformers_valor import ValorProcessor

    workdir = tmp_path_factory.mktemp("ddp")
    # The three runs decode the same clips with the same settings: one shared decoded cache.
    data = {
        "per_device_batch_size": 2,
        "cache_decoded": True,
        "cache_num_workers": 0,
        "cache_dir": str(workdir / "cache"),
    }
    test_set = {"name": "test", "path": str(tiny_corpus), "split": "test", "num_frames": 2}
    evaluation = {"caption_metrics": ["BLEU"], "max_new_tokens": 4}
    runs = {
        "pretrain": tiny_run(
            tiny_corpus,
            tiny_processor_dir,
            workdir / "pretrain",
            data=data,
            training={"max_steps": 3, "checkpoint_every": 2},
        ),
        # Two groups per step for retrieval (one DDP forward scores both); captioning runs SCST.
        "retrieval": tiny_run(
            tiny_corpus,
            tiny_processor_dir,
            workdir / "retrieval",
            datasets=[
                {
                    "name": "tiny",
                    "path": str(tiny_corpus),
                    "num_frames": 2,
                    "contrastive_groups": ["tva", "tv"],
                }
            ],
            data=data,
            training={"max_steps": 2},
            evaluation={"datasets": [{**test_set, "contrastive_groups": ["tva", "tv"]}], **evaluation},
        ),
        "captioning": tiny_run(
            tiny_corpus,
            tiny_processor_dir,
            workdir / "captioning",
            datasets=[{"name": "tiny", "path": str(tiny_corpus), "num_frames": 2, "caption_groups": ["tv"]}],
            data=data,
            training={"max_steps": 2},
            scst={"enabled": True, "num_samples": 2, "max_new_tokens": 4},
            evaluation={"datasets": [{**test_set, "caption_groups": ["tv"]}], **evaluation},
        ),
    }
    for name in ("fsdp", "fsdp_resumed"):
        runs[name] = {
            **runs["pretrain"],
            "training": {**runs["pretrain"]["training"], "output_dir": str(workdir / name)},
        }
    runs["fsdp_retrieval"] = {
        **runs["retrieval"],
        "training": {**runs["retrieval"]["training"], "output_dir": str(workdir / "fsdp_retrieval")},
    }
    streamed = [{"name": "tiny", "path": str(tiny_shards), "format": "webdataset", "num_frames": 2}]
    for name in ("stream", "stream_resumed"):
        runs[name] = tiny_run(
            tiny_corpus,
            tiny_processor_dir,
            workdir / name,
            datasets=streamed,
            data={"per_device_batch_size": 2, "shuffle_buffer": 2},
            training={"max_steps": 3, "checkpoint_every": 2},
        )
    for name, values in runs.items():
        (workdir / f"{name}.yaml").write_text(yaml.safe_dump(values))
    # examples/caption_videos.py with a random tiny captioner over the test clips and one damaged file.
    tiny_generator(tiny_processor_dir).save_pretrained(workdir / "captioner")
    ValorProcessor.from_pretrained(tiny_processor_dir).save_pretrained(workdir / "captioner")
    (workdir / "broken.mp4").write_bytes(b"not a video")
    clips = sorted(str(p) for p in (tiny_corpus / "test").glob("*.mp4"))
    (workdir / "caption_list.txt").write_text("\n".join([*clips, "broken.mp4"]) + "\n")
    caption_args = {
        "model": str(workdir / "captioner"),
        "videos": str(workdir / "caption_list.txt"),
        "output": str(workdir / "captions"),
        **CAPTION_VIDEOS_SETTINGS,
    }
    (workdir / "caption_args.json").write_text(json.dumps(caption_args))
    encode_args = {**ENCODE_VIDEOS_SETTINGS, "output": str(workdir / "gallery")}
    encode_args.update({key: caption_args[key] for key in ("model", "videos")})
    (workdir / "encode_args.json").write_text(json.dumps(encode_args))
    worker = os.path.join(os.path.dirname(__file__), "distributed_training_worker.py")
    # Its own session, so that a timeout kills the workers too (killing torchrun alone leaves them orphaned).
    process = subprocess.Popen(
        torchrun_command(worker, str(workdir)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
        start_new_session=True,
    )
    try:
        _, stderr = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        raise AssertionError(f"the torchrun launch did not finish in 600 s: {stderr[-6000:]}") from None
    assert process.returncode == 0, stderr[-6000:]
    return workdir
