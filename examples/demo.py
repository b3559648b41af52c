"""The `make demo` entry point: VALOR's recipe in miniature on the synthetic corpus, on the CPU.

Steps (each timed):

1. write (or reuse) the synthetic audiovisual corpus: 2,000 training and 200 test clips (`--seed` picks which);
2. train a WordPiece vocabulary on the training captions with `tokenizers` and save a `ValorProcessor`;
3. stage 0, unimodal pretraining (`transformers_valor.training.unimodal`, `examples/configs/demo_unimodal.yaml`)
   on clips disjoint from the corpus's: Video Swin as a colour / shape / direction classifier, an AST as a sound
   classifier, a BERT with masked-language modelling; each saved as a standard checkpoint of its class under
   `<output_dir>/encoders/`;
4. stage 1, VALOR pretraining (MGA + MGC) from those three checkpoints (`model.text_encoder`, `vision_encoder`,
   `audio_encoder`, i.e. `init_from_encoders`) with
   `accelerate launch --multi_gpu --num_processes 2 examples/pretrain.py --config examples/configs/demo.yaml`
   (a subprocess; two 1-thread gloo DDP processes are faster on 2 cores than one 2-thread process, and far less
   sensitive to other load on the machine);
5. load the saved model with `ValorModel` / `ValorForConditionalGeneration.from_pretrained`, evaluate on the test
   split and print one table: text-to-video / audio / audiovisual retrieval, and captioning from video, audio and
   both (BLEU-4, CIDEr, attribute accuracy); caption one test clip straight from its .mp4;
6. write `<output_dir>/report.html` (`transformers_valor.training.demo_report`).

    python examples/demo.py [--output_dir outputs/demo] [--seed 0] [--num_processes 2] [--skip_training]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "examples" / "configs" / "demo.yaml"
UNIMODAL_CONFIG = REPO / "examples" / "configs" / "demo_unimodal.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output_dir", default=str(REPO / "outputs" / "demo"), help="Corpus, processor, run."
    )
    parser.add_argument("--num_train", type=int, default=2000)
    parser.add_argument("--num_test", type=int, default=200)
    parser.add_argument(
        "--motion_trail",
        type=int,
        default=3,
        help="Fading copies drawn behind the moving shape, so each frame shows the direction (0: none).",
    )
    parser.add_argument(
        "--num_processes", type=int, default=2, help="Training processes (CPU: gloo DDP if > 1)."
    )
    parser.add_argument(
        "--skip_training",
        action="store_true",
        help="Skip stages 0 and 1: evaluate the model already in the run folder.",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="Seed of the corpus generator (which clips exist), of stage 0 and of stage 1 (`training.seed`).",
    )
    parser.add_argument("--set", nargs="*", default=[], help="Extra config overrides for pretrain.py.")
    parser.add_argument(
        "--set_unimodal",
        nargs="*",
        default=[],
        help="Overrides of the stage-0 config, e.g. video.steps=20 corpus.num_clips=300.",
    )
    parser.add_argument("--num_beams", type=int, default=3)
    return parser.parse_args(argv)


def build_processor(corpus: Path, output: Path):
    """Train the WordPiece vocabulary on the training captions and save the demo's ValorProcessor."""
    from transformers_valor import ValorFeatureExtractor, ValorProcessor, ValorVideoProcessor
    from transformers_valor.data.synthetic import load_metadata
    from transformers_valor.data.vocab import train_wordpiece_tokenizer

    rows = load_metadata(corpus / "train")
    texts = [caption for row in rows for caption in row["captions"]]
    tokenizer = train_wordpiece_tokenizer(texts, output / "vocab", vocab_size=400)
    processor = ValorProcessor(
        tokenizer=tokenizer,
        video_processor=ValorVideoProcessor(num_frames=4, size=64),
        # 2-s clips at 16 kHz give ~203 fbank frames: one clip of 208 frames (13 patches of 16) covers them.
        feature_extractor=ValorFeatureExtractor(sampling_rate=16000, clip_length=208, num_clips=1),
        max_text_length=24,
    )
    processor.save_pretrained(output)
    return processor


def pretrain_towers(args: argparse.Namespace, processor, encoders_dir: Path) -> dict[str, Path]:
    """Stage 0: each tower pretrained alone on clips disjoint from the corpus's; returns the three checkpoints."""
    from transformers_valor.training.unimodal import load_unimodal_config, run_unimodal_pretraining

    config = load_unimodal_config(UNIMODAL_CONFIG, args.set_unimodal)
    folders = run_unimodal_pretraining(config, processor, encoders_dir, seed=args.seed)
    summary = json.loads((encoders_dir / "unimodal_summary.json").read_text(encoding="utf-8"))
    accuracy = {
        name: value for tower in summary["heldout_accuracy"].values() for name, value in tower.items()
    }
    print("stage 0 held-out accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items()), flush=True)
    print(
        "stage 0 training time: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in summary["training_seconds"].items())
    )
    return folders


def launch_training(
    args: argparse.Namespace, processor_dir: Path, corpus: Path, run_dir: Path, encoders: dict[str, Path]
) -> None:
    """Stage 1: examples/pretrain.py from the stage-0 towers under `accelerate launch` (CPU; `--multi_gpu` gives
    gloo DDP with 2+ processes)."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
    ]
    command += ["--dynamo_backend", "no", "--num_processes", str(args.num_processes)]
    if args.num_processes > 1:
        command.append("--multi_gpu")
    # The demo trains afresh every time: a second `make demo` replaces the previous run in `run_dir`.
    command += [
        str(REPO / "examples" / "pretrain.py"),
        "--config",
        str(CONFIG),
        "--overwrite_output_dir",
        "--set",
    ]
    command += [
        f"model.processor={processor_dir}",
        f"datasets.0.path={corpus}",
        f"training.output_dir={run_dir}",
        f"training.seed={args.seed}",
        f"model.text_encoder={encoders['text']}",
        f"model.vision_encoder={encoders['video']}",
        f"model.audio_encoder={encoders['audio']}",
    ]
    command += args.set
    print("$", " ".join(command), flush=True)
    env = dict(
        os.environ,
        OMP_NUM_THREADS=os.environ.get(
            "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.num_processes))
        ),
    )
    subprocess.run(command, check=True, env=env, cwd=REPO)


def evaluate(model_dir: Path, corpus: Path, num_beams: int, cache_dir: Path) -> dict:
    """Retrieval and captioning on the test split (decoded once, cached in `cache_dir`); returns the table's
    numbers, the predictions, the metadata rows of the evaluated clips and the decoded set."""
    from transformers_valor import ValorForConditionalGeneration, ValorModel, ValorProcessor
    from transformers_valor.configuration_valor import CAPTION_GROUPS, RETRIEVAL_GROUPS
    from transformers_valor.data.datasets import DatasetConfig
    from transformers_valor.data.synthetic import attribute_accuracy, load_metadata
    from transformers_valor.training.evaluation import (
        decode_evaluation_set,
        evaluate_captioning,
        evaluate_retrieval,
    )

    processor = ValorProcessor.from_pretrained(model_dir)
    test_split = DatasetConfig(
        name="demo_test",
        path=str(corpus),
        split="test",
        num_frames=processor.video_processor.num_frames,
        num_clips=processor.feature_extractor.num_clips,
    )
    eval_set = decode_evaluation_set(test_split, processor, cache_dir, num_workers=2)
    rows_by_id = {row["id"]: row for row in load_metadata(corpus / "test")}
    rows = [rows_by_id[sample_id] for sample_id in eval_set.sample_ids]

    # One query per clip: the caption it was rendered with.
    retrieval_model = ValorModel.from_pretrained(model_dir)
    queries = [[row["caption"]] for row in rows]
    retrieval = evaluate_retrieval(retrieval_model, processor, eval_set, RETRIEVAL_GROUPS, queries=queries)

    captioner = ValorForConditionalGeneration.from_pretrained(model_dir)
    captioning, predictions = evaluate_captioning(
        captioner,
        processor,
        eval_set,
        CAPTION_GROUPS,
        metrics=("BLEU", "CIDEr"),
        num_beams=num_beams,
        max_new_tokens=30,
    )
    for group, captions in predictions.items():
        accuracy = attribute_accuracy(list(captions.values()), rows)
        captioning[group].update({f"attr_{name}": value for name, value in accuracy.items()})
    return {
        "retrieval": retrieval,
        "captioning": captioning,
        "predictions": predictions,
        "rows": rows,
        "eval_set": eval_set,
    }


def format_table(results: dict) -> str:
    """One plain-text table with the retrieval and captioning numbers."""
    from transformers_valor.configuration_valor import CAPTION_GROUPS, MODALITY_GROUPS, RETRIEVAL_GROUPS

    header = f"retrieval ({len(results['rows'])} test clips)"
    lines = [f"{header:<29}R@1     R@5     R@10    MedR"]
    for group in RETRIEVAL_GROUPS:
        spec, m = MODALITY_GROUPS[group], results["retrieval"][group]
        text_to_x = spec.metric_names[0]
        recalls = "   ".join(f"{m[f'{text_to_x}_R@{k}'] / 100:.3f}" for k in (1, 5, 10))
        lines.append(f"  {spec.label:<26} {recalls}   {m[f'{text_to_x}_median_rank']:.1f}")
    lines.append("captioning                   BLEU-4  CIDEr   colour  shape   direct. sound   all four")
    labels = {"tv": "video only", "ta": "audio only", "tva": "video + audio"}
    for group in CAPTION_GROUPS:
        m = results["captioning"][group]
        lines.append(
            f"  {labels[group]:<26} {m['BLEU-4']:.3f}   {m['CIDEr']:.3f}   {m['attr_color']:.3f}   "
            f"{m['attr_shape']:.3f}   {m['attr_direction']:.3f}   {m['attr_sound']:.3f}   {m['attr_all']:.3f}"
        )
    return "\n".join(lines)


def caption_one(model_dir: Path, video: Path, num_beams: int) -> str:
    """Caption one .mp4 straight from the file: processor (frames + soundtrack) then generate()."""
    from transformers_valor import ValorForConditionalGeneration, ValorProcessor

    processor = ValorProcessor.from_pretrained(model_dir)
    model = ValorForConditionalGeneration.from_pretrained(model_dir).eval()
    inputs = processor(videos=str(video), return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(
            pixel_values_videos=inputs["pixel_values_videos"],
            input_features=inputs["input_features"],
            num_beams=num_beams,
            max_new_tokens=30,
        )
    return processor.batch_decode(ids)[0]


def write_results(path: Path, results: dict, timings: dict[str, float], seed: int) -> None:
    """The run's numbers as JSON (written beside, then renamed): the table's metrics, stage 0's held-out
    accuracies and the timings, e.g. to compare seeds."""
    stage0 = path.parent / "encoders" / "unimodal_summary.json"
    payload = {
        "seed": seed,
        "retrieval": results["retrieval"],
        "captioning": results["captioning"],
        "stage0": json.loads(stage0.read_text(encoding="utf-8")) if stage0.exists() else None,
        "timings_seconds": {name: round(seconds, 1) for name, seconds in timings.items()},
    }
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    """Run the whole demo, print the results table and write the report."""
    args = parse_args(argv)
    from transformers_valor.data.synthetic import generate_corpus
    from transformers_valor.training.demo_report import write_demo_report

    out = Path(args.output_dir).resolve()
    corpus, processor_dir, run_dir = out / "corpus", out / "processor", out / "run"
    encoders_dir = out / "encoders"
    timings = {}
    start = t0 = time.perf_counter()
    generate_corpus(
        corpus, args.num_train, args.num_test, seed=args.seed, motion_trail=args.motion_trail, progress=True
    )
    timings["corpus"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    processor = build_processor(corpus, processor_dir)
    timings["vocabulary + processor"] = time.perf_counter() - t0

    if not args.skip_training:
        t0 = time.perf_counter()
        encoders = pretrain_towers(args, processor, encoders_dir)
        timings["stage 0 (unimodal)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        launch_training(args, processor_dir, corpus, run_dir, encoders)
        timings["stage 1 (accelerate launch)"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model_dir = run_dir / "final"
    results = evaluate(model_dir, corpus, args.num_beams, run_dir / "eval_cache")
    timings["evaluation"] = time.perf_counter() - t0

    table = format_table(results)
    print("\n" + table)
    row = results["rows"][0]
    video = corpus / "test" / row["file_name"]
    print(f"\nexample: {video}")
    print(f"  reference: {row['caption']}")
    print(f"  generated: {caption_one(model_dir, video, args.num_beams)}")
    t0 = time.perf_counter()
    report = write_demo_report(out, results, corpus, model_dir, table, seed=args.seed)
    timings["report"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start
    write_results(out / "results.json", results, timings, args.seed)
    print(f"\nreport: {report}")
    print("\ntimings: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items()))


if __name__ == "__main__":
    main()
