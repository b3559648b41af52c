"""Video-caption datasets (`transformers_valor.data.datasets`): annotation formats, benchmark layouts, per-dataset
modality groups and the mixed batch sampler."""

import csv
import json
import os
from pathlib import Path

import pytest

from transformers_valor.data.datasets import DatasetConfig, MixedBatchSampler, load_video_text_dataset


def test_metadata_and_valor_json_formats(tiny_corpus, tmp_path):
    table = load_video_text_dataset(DatasetConfig(name="m", path=str(tiny_corpus)))
    assert sorted(table.column_names) == ["captions", "sample_id", "video_path"]
    assert len(table) == 8 and len(table[0]["captions"]) == 8 and os.path.isfile(table[0]["video_path"])

    entries = [
        {"video_id": "train_00000", "desc": "a red circle"},
        {"video_id": "train_00001", "desc": ["x", "y"]},
    ]
    (tmp_path / "desc.json").write_text(json.dumps(entries))
    config = DatasetConfig(
        name="v",
        path=str(tmp_path),
        format="valor_json",
        annotation_file="desc.json",
        video_dir=str(tiny_corpus / "train"),
    )
    table = load_video_text_dataset(config)
    assert table["sample_id"] == ["train_00000", "train_00001"]
    assert table["captions"] == [["a red circle"], ["x", "y"]]
    assert table["video_path"][0] == str(tiny_corpus / "train" / "train_00000.mp4")


def test_missing_split_and_folder_are_named(tiny_corpus, tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"no split 'validation' in .*its splits are \['test', 'train'\]"
    ):
        load_video_text_dataset(DatasetConfig(name="m", path=str(tiny_corpus), split="validation"))
    with pytest.raises(FileNotFoundError, match=r"dataset 'm': no such folder .*nowhere"):
        load_video_text_dataset(DatasetConfig(name="m", path=str(tmp_path / "nowhere")))


def test_dataset_groups_follow_modality():
    assert DatasetConfig(name="a", path=".").contrastive_groups == ["tva", "tv", "ta"]
    video_only = DatasetConfig(name="w", path=".", modality="video")
    assert video_only.contrastive_groups == ["tv"] and video_only.caption_groups == ["tv"]
    assert DatasetConfig(name="c", path=".", modality="image", num_frames=4).num_frames == 1
    with pytest.raises(ValueError, match="audio groups"):
        DatasetConfig(name="w", path=".", modality="video", contrastive_groups=["tva"])
    assert DatasetConfig(name="a", path=".").mlm_groups == []  # conditioned MLM only where asked for
    assert DatasetConfig(name="w", path=".", modality="video", mlm_groups=["tv"]).mlm_groups == ["tv"]
    with pytest.raises(ValueError, match="audio groups"):
        DatasetConfig(name="w", path=".", modality="video", mlm_groups=["tva"])
    with pytest.raises(ValueError, match="unknown mlm group 'va'"):
        DatasetConfig(name="a", path=".", mlm_groups=["va"])


def test_mixed_sampler_is_homogeneous_deterministic_and_split_across_ranks():
    sizes, ratios = [40, 100], [1.0, 3.0]
    ranks = [MixedBatchSampler(sizes, ratios, batch_size=4, num_replicas=2, rank=r, seed=7) for r in (0, 1)]
    batches = [list(s) for s in ranks]
    assert len(batches[0]) == len(ranks[0]) == 140 // 8
    for b0, b1 in zip(*batches):
        assert {r.dataset_index for r in b0 + b1} == {b0[0].dataset_index}  # one dataset per global batch
        assert not {r.row_index for r in b0} & {r.row_index for r in b1}  # disjoint slices
    assert [[(r.dataset_index, r.row_index) for r in b] for b in batches[0]] == [
        [(r.dataset_index, r.row_index) for r in b] for b in ranks[0]
    ]
    ranks[0].set_epoch(1)
    assert [r.row_index for r in next(iter(ranks[0]))] != [r.row_index for r in batches[0][0]]
    share = sum(b[0].dataset_index for b in batches[0]) / len(batches[0])
    assert share > 0.5  # the second dataset has three times the weight


def touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_msrvtt_layout(tmp_path):
    root = tmp_path / "msrvtt"
    touch(root / "videos", "video0.mp4", "video1.mp4", "video7.mp4")
    sentences = [
        {"video_id": "video0", "caption": "a man sings", "sen_id": 0},
        {"video_id": "video1", "caption": "a cat jumps", "sen_id": 1},
        {"video_id": "video0", "caption": "someone is singing", "sen_id": 2},
        {"video_id": "video7", "caption": "cars race", "sen_id": 3},
    ]
    (root / "annotation").mkdir()
    (root / "annotation" / "MSR_VTT.json").write_text(json.dumps({"videos": [], "sentences": sentences}))
    (root / "splits").mkdir()
    (root / "splits" / "train_list.txt").write_text("video7\nvideo0\n\n")
    config = DatasetConfig(
        name="msrvtt",
        path=str(root),
        format="msrvtt",
        annotation_file="annotation/MSR_VTT.json",
        id_list="splits/train_list.txt",
        video_dir="videos",
        modality="video",
    )
    table = load_video_text_dataset(config)
    assert table["sample_id"] == ["video7", "video0"]
    assert table["captions"] == [["cars race"], ["a man sings", "someone is singing"]]
    assert table["video_path"][1] == str(root / "videos" / "video0.mp4")

    # The 1k-A test split: one caption per video in a CSV.
    with open(root / "annotation" / "MSRVTT_JSFUSION_test.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "vid_key", "video_id", "sentence"])
        writer.writerow(["ret0", "msr0", "video1", "a cat jumps over a box"])
        writer.writerow(["ret1", "msr1", "video7", "racing cars"])
    config = DatasetConfig(
        name="msrvtt_1k",
        path=str(root),
        format="msrvtt",
        annotation_file="annotation/MSRVTT_JSFUSION_test.csv",
        video_dir="videos",
        modality="video",
    )
    table = load_video_text_dataset(config)
    assert table["sample_id"] == ["video1", "video7"] and table["captions"] == [
        ["a cat jumps over a box"],
        ["racing cars"],
    ]


def test_vatex_layout(tmp_path):
    root = tmp_path / "vatex"
    touch(root / "videos", "abc_000010_000020.mp4")
    entries = [{"videoID": "abc_000010_000020", "enCap": ["one", "two"], "chCap": ["一", "二"]}]
    (root / "annotation").mkdir()
    (root / "annotation" / "vatex_training_v1.0.json").write_text(json.dumps(entries))
    config = DatasetConfig(
        name="vatex",
        path=str(root),
        format="vatex",
        annotation_file="annotation/vatex_training_v1.0.json",
        video_dir="videos",
    )
    table = load_video_text_dataset(config)
    assert table["sample_id"] == ["abc_000010_000020"] and table["captions"] == [["one", "two"]]
    assert table["video_path"] == [str(root / "videos" / "abc_000010_000020.mp4")]


def test_audiocaps_layout(tmp_path):
    root = tmp_path / "audiocaps"
    touch(root / "audio", "yt1.wav", "yt2.flac")
    with open(root / "test.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["audiocap_id", "youtube_id", "start_time", "caption"])
        writer.writerow([1, "yt1", 30, "a dog barks"])
        writer.writerow([2, "yt2", 0, "rain falls"])
        writer.writerow([3, "yt1", 30, "barking"])
    config = DatasetConfig(
        name="audiocaps",
        path=str(root),
        format="audiocaps",
        annotation_file="test.csv",
        video_dir="audio",
        modality="audio",
    )
    assert config.contrastive_groups == ["ta"] and config.caption_groups == ["ta"]
    table = load_video_text_dataset(config)
    assert table["sample_id"] == ["yt1", "yt2"]
    assert table["captions"] == [["a dog barks", "barking"], ["rain falls"]]
    assert table["video_path"] == [str(root / "audio" / "yt1.wav"), str(root / "audio" / "yt2.flac")]
    with pytest.raises(ValueError, match="no frames"):
        DatasetConfig(name="x", path=".", modality="audio", contrastive_groups=["tv"])


def test_clotho_layout(tmp_path):
    root = tmp_path / "clotho"
    touch(root / "evaluation", "rain on roof.wav")
    with open(root / "clotho_captions_evaluation.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", *[f"caption_{i}" for i in range(1, 6)]])
        writer.writerow(["rain on roof.wav", "rain", "heavy rain", "drops", "water falls", "a storm"])
    config = DatasetConfig(
        name="clotho",
        path=str(root),
        format="clotho",
        annotation_file="clotho_captions_evaluation.csv",
        video_dir="evaluation",
        modality="audio",
    )
    table = load_video_text_dataset(config)
    assert table["sample_id"] == ["rain on roof"]
    assert table["captions"] == [["rain", "heavy rain", "drops", "water falls", "a storm"]]
    assert table["video_path"] == [str(root / "evaluation" / "rain on roof.wav")]


def test_valor32k_layout_with_id_list(tmp_path):
    root = tmp_path / "valor32k"
    touch(root / "videos", "v1.mp4", "v2.mp4")
    entries = [
        {"video_id": "v1", "desc": "a man plays a guitar and sings"},
        {"video_id": "v2", "desc": "a dog"},
    ]
    (root / "desc_test.json").write_text(json.dumps(entries))
    (root / "test_ids.txt").write_text("v2\n")
    config = DatasetConfig(
        name="valor32k",
        path=str(root),
        format="valor_json",
        annotation_file="desc_test.json",
        id_list="test_ids.txt",
        video_dir="videos",
    )
    table = load_video_text_dataset(config)
    assert table["sample_id"] == ["v2"] and table["captions"] == [["a dog"]]
    (root / "bad_ids.txt").write_text("v9\n")
    config.id_list = "bad_ids.txt"
    with pytest.raises(ValueError, match="v9"):
        load_video_text_dataset(config)


def test_qa_json_layout(tmp_path):
    root = tmp_path / "msrvtt_qa"
    touch(root / "videos", "video3.mp4")
    entries = [
        {"video_id": "video3", "question": "what is the man doing", "answer": "sing"},
        {"video_id": "video3", "question": "who sings", "answer": "man"},
    ]
    (root / "test_qa.json").write_text(json.dumps(entries))
    config = DatasetConfig(
        name="qa",
        path=str(root),
        format="valor_json",
        annotation_file="test_qa.json",
        video_dir="videos",
        question_column="question",
    )
    table = load_video_text_dataset(config)
    assert table["question"] == ["what is the man doing", "who sings"]
    assert table["captions"] == [["sing"], ["man"]] and len(set(table["sample_id"])) == 2
