"""The training DataLoader (`transformers_valor.training.data`): the mix, the decoded cache, per-process batches."""

import torch
from accelerate import Accelerator

from training_helpers import reset_accelerate, tiny_run
from transformers_valor import ValorConfig, ValorProcessor
from transformers_valor.training import build_dataloader, config_from_dict


def test_decoded_cache_is_written_under_the_output_dir(retrieval_run):
    output_dir, _ = retrieval_run
    assert list((output_dir / "decoded_cache").glob("tiny-*.safetensors"))


def test_dataloader_serves_this_process_slice_from_the_cache(tiny_corpus, tiny_processor_dir, tmp_path):
    values = tiny_run(
        tiny_corpus,
        tiny_processor_dir,
        tmp_path,
        data={
            "per_device_batch_size": 4,
            "cache_decoded": True,
            "cache_num_workers": 0,
            "cache_dir": str(tmp_path / "c"),
        },
    )
    config = config_from_dict(values)
    processor = ValorProcessor.from_pretrained(tiny_processor_dir)
    try:
        loader, sampler, mix = build_dataloader(config, processor, ValorConfig(), Accelerator(cpu=True))
    finally:
        reset_accelerate()
    assert len(sampler) == 2 and mix.sizes == [8]
    batches = list(loader)
    assert [len(b["sample_ids"]) for b in batches] == [4, 4]
    assert {sid for b in batches for sid in b["sample_ids"]} == {f"train_0000{i}" for i in range(8)}
    assert (
        batches[0]["pixel_values_videos"].shape == (4, 2, 3, 32, 32)
        and batches[0]["pixel_values_videos"].dtype == torch.float32
    )
    assert list((tmp_path / "c").glob("tiny-*.safetensors"))
