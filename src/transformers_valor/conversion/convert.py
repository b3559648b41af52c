"""Convert the published VALOR checkpoints (reference PyTorch state dicts) into this project's format.

    python -m transformers_valor.conversion --checkpoint VALOR_base.pt --variant valor-b \
        --vocab bert-base-uncased/vocab.txt --output_dir valor-base [--push_to_hub my-org/valor-base]

Steps (as timm's `checkpoint_filter_fn` and nanoGPT's `from_pretrained` do it):
1. load the state dict with `torch.load(weights_only=True)` (`key_mapping.load_original_state_dict`);
2. infer the [`ValorConfig`] from the tensor shapes (`config_inference.infer_config`) and store the task prompts'
   token ids from the vocabulary (`ValorConfig.set_task_prompt_ids`; VALOR-L uses them, so it needs `--vocab`);
3. map EVERY key through an explicit rule table (`key_mapping.convert_state_dict`): a key is either mapped, or
   dropped with a stated reason (CLIP's text tower, BERT's pooler, buffers the model recomputes, the duplicate
   `txt_encoder.*` copy of the shared BERT, ...); any other key, any shape mismatch and any model weight left
   unfilled stop the conversion with a `ConversionError` that lists them;
4. save safetensors + config, the processor (BERT WordPiece tokenizer from the given `vocab.txt`, the video
   processor with ImageNet (VALOR-B) or CLIP (VALOR-L) statistics, the audio feature extractor) and a model card;
5. reload the saved folder as [`ValorForRetrieval`] and [`ValorForConditionalGeneration`] and compare text
   features, retrieval scores and caption logits (with VALOR-L's task prompts) with an independent forward
   computed from the ORIGINAL tensors (`reference.verify_conversion`).

Everything is written into a temporary folder beside `--output_dir` and moved into place only once the parity
check has passed: a refused conversion leaves nothing loadable behind. An existing `--output_dir` must be empty
or hold an earlier conversion (which is then replaced as a whole).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import BertTokenizerFast
from transformers.models.bert.tokenization_bert import load_vocab

from ..configuration_valor import ValorConfig
from ..feature_extraction_valor import ValorFeatureExtractor
from ..modelcard import ORIGINAL_LICENSE, PRETRAINING_DATASETS, create_model_card
from ..modeling_valor import ValorForPreTraining
from ..processing_valor import ValorProcessor
from ..video_processing_valor import ValorVideoProcessor
from .config_inference import VARIANTS, Variant, infer_config
from .key_mapping import TIED_DECODER_KEY, convert_state_dict, load_original_state_dict
from .reference import verify_conversion
from .report import ConversionError, ConversionReport

logger = logging.getLogger(__name__)

CLI_NAME = "python -m transformers_valor.conversion"
REPORT_NAME = "conversion_report.json"


def _check_output_dir(output_dir: Path) -> None:
    """`output_dir` may be missing, empty, or an earlier conversion (with its report); anything else is refused."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ConversionError(f"--output_dir {output_dir} is a file, not a folder.")
    present = sorted(p.name for p in output_dir.iterdir()) if output_dir.is_dir() else []
    if present and REPORT_NAME not in present:
        raise ConversionError(
            f"{output_dir} holds files that are not a conversion ({', '.join(present[:5])}); give an empty or new "
            "--output_dir (nothing was written)."
        )


def _publish(tmp: Path, output_dir: Path) -> None:
    """Move the verified folder `tmp` to `output_dir`, replacing an earlier conversion there."""
    old = output_dir.with_name(f".{output_dir.name}.replaced-{os.getpid()}")
    if output_dir.exists():
        os.replace(output_dir, old)
    os.replace(tmp, output_dir)
    shutil.rmtree(old, ignore_errors=True)


def build_processor(vocab_path: str | os.PathLike, variant: Variant, config: ValorConfig) -> ValorProcessor:
    """
    The [`ValorProcessor`] of a converted checkpoint: BERT uncased WordPiece from `vocab_path`, the video
    processor with ImageNet (VALOR-B) or CLIP (VALOR-L) statistics, and the audio feature extractor.
    """
    tokenizer = BertTokenizerFast(vocab=load_vocab(os.fspath(vocab_path)), do_lower_case=True)
    if len(tokenizer) != config.text_config.vocab_size:
        raise ConversionError(
            f"{vocab_path} has {len(tokenizer)} entries but the checkpoint's vocabulary has "
            f"{config.text_config.vocab_size}; use bert-base-uncased's vocab.txt."
        )
    size = config.vision_config.image_size
    video_processor = ValorVideoProcessor.for_vision_tower(
        "clip" if variant == "valor-l" else "video_swin", size={"height": size, "width": size}
    )
    mel, frames = config.audio_config.image_size
    feature_extractor = ValorFeatureExtractor(feature_size=mel, num_mel_bins=mel, clip_length=frames)
    return ValorProcessor(
        tokenizer=tokenizer, video_processor=video_processor, feature_extractor=feature_extractor
    )


def _set_task_prompt_ids(config: ValorConfig, processor: ValorProcessor | None) -> None:
    """Store the task prompts' token ids (from the checkpoint's vocabulary) in `config`; VALOR-L needs them."""
    if processor is not None:
        config.set_task_prompt_ids(processor.tokenizer)
    elif config.use_task_prompt:
        raise ConversionError(
            "VALOR-L runs with task prompts, whose token ids come from the vocabulary: pass --vocab "
            "(bert-base-uncased's vocab.txt)."
        )


def _save_model(
    state_dict: Mapping[str, torch.Tensor],
    config: ValorConfig,
    variant: Variant,
    output_dir: str | os.PathLike,
) -> ConversionReport:
    """Build [`ValorForPreTraining`], load the converted weights (decoder tied) and save it to `output_dir`."""
    model = ValorForPreTraining(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    converted, report = convert_state_dict(state_dict, config, variant, expected_shapes=expected)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if unexpected or set(missing) - {TIED_DECODER_KEY}:
        raise ConversionError(f"Loading failed: missing {missing}, unexpected {unexpected}.")
    if not torch.equal(model.cls.predictions.decoder.weight, model.get_input_embeddings().weight):
        raise ConversionError("The MLM decoder is not tied to the word embeddings after loading.")
    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir)
    return report


def _write_card_and_report(
    config: ValorConfig,
    output_dir: str | os.PathLike,
    source: str,
    variant: Variant,
    report: ConversionReport,
    push_to_hub: str | None,
    model_card_kwargs: Mapping[str, Any] | None,
    folder: str | os.PathLike | None = None,
) -> None:
    """Write `README.md` (the model card, with the conversion summary) and `conversion_report.json` into `folder`
    (default `output_dir`, whose name is the card's model id)."""
    folder = output_dir if folder is None else folder
    card_kwargs = {
        "model_id": push_to_hub or os.path.basename(os.path.normpath(os.fspath(output_dir))),
        "description": "## Conversion\n\n"
        f"Converted from the original VALOR checkpoint `{os.path.basename(source)}` ({variant}) with "
        f"`{CLI_NAME}`.\n\n" + report.summary(),
        "license": ORIGINAL_LICENSE,  # the original weights'
        # The paper's VALOR-B recipe; VALOR-L's corpora are not stated (pass `datasets` in `model_card_kwargs`).
        "datasets": list(PRETRAINING_DATASETS) if variant == "valor-b" else None,
        **(model_card_kwargs or {}),
    }
    create_model_card(config, folder, **card_kwargs)
    with open(os.path.join(folder, REPORT_NAME), "w") as handle:
        json.dump(
            {"mapped": report.mapped, "dropped": report.dropped, "verification": report.verification},
            handle,
            indent=1,
        )


def _upload(output_dir: str | os.PathLike, repo_id: str) -> None:
    """Create the Hub repository `repo_id` if needed and upload the converted folder."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=os.fspath(output_dir))


def convert_checkpoint(
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
    variant: Variant,
    output_dir: str | os.PathLike,
    vocab: str | os.PathLike | None = None,
    image_size: int = 224,
    config_overrides: Mapping[str, Any] | None = None,
    verify: bool = True,
    push_to_hub: str | None = None,
    model_card_kwargs: Mapping[str, Any] | None = None,
) -> ConversionReport:
    """
    Convert a reference checkpoint (path or already loaded state dict) and write it to `output_dir`.

    Writes `model.safetensors` + `config.json` ([`ValorForPreTraining`], loadable by every VALOR head), the
    processor files when `vocab` is given, and `README.md`. With `verify` (default) the saved folder is reloaded
    and compared with the original weights (`verify_conversion`); with `push_to_hub` the folder is uploaded.
    The files are written to a temporary folder beside `output_dir` and moved there only when every check passed.

    Returns:
        The [`ConversionReport`] (mapped / dropped keys, parity results).
    """
    is_path = isinstance(checkpoint, (str, os.PathLike))
    source = os.fspath(checkpoint) if is_path else "<state dict>"
    state_dict = load_original_state_dict(checkpoint) if is_path else dict(checkpoint)
    config = infer_config(state_dict, variant, image_size=image_size, overrides=config_overrides)
    processor = build_processor(vocab, variant, config) if vocab is not None else None
    _set_task_prompt_ids(config, processor)
    output_dir = Path(output_dir)
    _check_output_dir(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_dir.with_name(f".{output_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        report = _save_model(state_dict, config, variant, tmp)
        if processor is not None:
            processor.save_pretrained(tmp)
        if verify:
            report.verification = verify_conversion(state_dict, tmp, variant)
        logger.info("Converted %s:\n%s", source, report.summary())
        _write_card_and_report(
            config, output_dir, source, variant, report, push_to_hub, model_card_kwargs, tmp
        )
        _publish(tmp, output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if push_to_hub:
        _upload(output_dir, push_to_hub)
    return report


def _parser() -> argparse.ArgumentParser:
    """The command-line arguments (see the module docstring)."""
    parser = argparse.ArgumentParser(prog=CLI_NAME, description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="the reference .pt state dict")
    parser.add_argument("--variant", required=True, choices=VARIANTS)
    parser.add_argument("--vocab", help="bert-base-uncased vocab.txt, for the tokenizer")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--push_to_hub", help="Hub repository id to upload the converted folder to")
    parser.add_argument(
        "--image_size", type=int, default=224, help="frame size the model runs at (default 224)"
    )
    parser.add_argument(
        "--config_overrides", type=json.loads, default=None, help="JSON merged into the config"
    )
    parser.add_argument("--no_verify", action="store_true", help="skip the parity check")
    return parser


def main(argv: list[str] | None = None) -> ConversionReport:
    """Command-line entry point, `python -m transformers_valor.conversion` (see the module docstring)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = convert_checkpoint(
        args.checkpoint,
        args.variant,
        args.output_dir,
        vocab=args.vocab,
        image_size=args.image_size,
        config_overrides=args.config_overrides,
        verify=not args.no_verify,
        push_to_hub=args.push_to_hub,
    )
    print(report.summary())
    return report
