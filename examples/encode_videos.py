"""Encode a folder (or a file list) of videos into a saved VALOR retrieval gallery, then build its first-stage
indexes; search it with the `audiovisual-retrieval` pipeline (`videos="path/to/gallery"`).

    python examples/encode_videos.py --model path/to/valor --videos /data/videos --output /data/gallery
    python examples/encode_videos.py --model m --videos list.txt --output g --dtype float16 --num_workers 4 --index ivf

Decoding runs in `--num_workers` DataLoader workers; the features are written in shards as they come, so an
interrupted run continues where it stopped when started again with the same arguments. Files that cannot be
decoded are skipped and listed in `<output>/failures.jsonl`. The implementation lives in
`transformers_valor.retrieval` (the command line in `retrieval.cli.encode_videos_main`).
"""

from transformers_valor.retrieval.cli import encode_videos_main

if __name__ == "__main__":
    encode_videos_main()
