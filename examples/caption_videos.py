"""Caption a folder, a file list or WebDataset shards of videos with VALOR into `<output>/captions.jsonl`.

    python examples/caption_videos.py --model path/to/valor --videos /data/videos --output /data/captions
    accelerate launch --multi_gpu --num_processes 8 examples/caption_videos.py --model m --videos list.txt \
        --output out --num_workers 4 --group tva --num_beams 3 --max_new_tokens 30

Each process captions its share of the items, decoding in `--num_workers` DataLoader workers, and writes its
captions in shards as they come, so an interrupted run continues where it stopped when started again with the same
arguments (with any number of processes). Files that cannot be decoded are listed by path in
`<output>/failures.jsonl`. The implementation lives in `transformers_valor.inference` (`inference.cli`).
"""

from accelerate import PartialState

from transformers_valor.inference.cli import caption_videos_main

if __name__ == "__main__":
    caption_videos_main()
    PartialState().destroy_process_group()  # gloo aborts a process that exits with its group alive
