"""Tests of `retrieval.index`: the first-stage vectors, the faiss index's save / load / extension, and its errors."""

import shutil
import sys

import pytest
import torch

from helpers import GalleryTester
from transformers_valor.losses import masked_softmax
from transformers_valor.retrieval import (
    VideoGallery,
    candidate_vectors,
    query_vectors,
    require_faiss,
    weighted_mean,
)

TESTER = GalleryTester(num_items=12)


@pytest.fixture(scope="module")
def model():
    return TESTER.create_model()


@pytest.fixture(scope="module")
def media(model):
    return TESTER.media_features(model)


def test_weighted_mean_is_the_mga_weighted_average(media):
    video = media["video"]
    weights = torch.softmax(video.weight_logits, dim=-1)
    torch.testing.assert_close(weighted_mean(video), (weights[..., None] * video.embeds).sum(1))
    audio = media["audio"]  # item 1 has one valid clip, item 2 none
    manual = (masked_softmax(audio.weight_logits, audio.mask)[..., None] * audio.embeds).sum(1)
    torch.testing.assert_close(weighted_mean(audio), manual)
    assert torch.equal(weighted_mean(audio)[2], torch.zeros(audio.embeds.shape[-1]))
    torch.testing.assert_close(weighted_mean(audio)[1], audio.embeds[1, 0])


@pytest.mark.parametrize("group", ["tv", "ta", "tva"])
def test_first_stage_score_is_a_lower_bound_of_the_fine_score(model, media, group):
    gallery = TESTER.gallery(model)
    text = TESTER.text_features(model)
    proxy = query_vectors(text) @ candidate_vectors(gallery, group, slice(None)).T
    uses = {"tv": ("video",), "ta": ("audio",), "tva": ("video", "audio")}[group]
    with torch.no_grad():
        fine = model.similarity(*model.group_features(group, text=text, **{m: media[m] for m in uses}))
    assert torch.all(fine >= proxy - 1e-6)
    assert not torch.allclose(fine, proxy)
    # Every position indexed: max_y <q, B_y> bounds the text -> media half of the score from below.
    positions = candidate_vectors(gallery, group, slice(None), "positions")
    per_item = (query_vectors(text) @ positions.T).view(text.embeds.shape[0], len(gallery), -1).amax(-1)
    media_side = torch.cat([media[m].embeds * media[m].mask[..., None] for m in uses], dim=1)
    sims = torch.einsum("qtd,npd->qntp", text.embeds * text.mask[..., None], media_side)
    text_weights = masked_softmax(text.weight_logits, text.mask)
    text_to_media = (sims.amax(-1) * text_weights[:, None]).sum(-1)
    assert torch.all(text_to_media >= per_item - 1e-6)


@pytest.mark.parametrize("vectors", ["mean", "positions"])
def test_index_is_saved_loaded_and_extended(model, media, tmp_path, vectors):
    gallery = TESTER.gallery(model, slice(0, 8), tmp_path / "g")
    index = gallery.build_index("tva", index_type="hnsw", hnsw_m=8, vectors=vectors)
    assert index.num_items == 8 and (tmp_path / "g" / "index" / "tva.faiss").is_file()
    queries = query_vectors(TESTER.text_features(model))
    loaded = VideoGallery.load(tmp_path / "g", model=model)
    assert set(loaded.indexes) == {"tva"} and loaded.indexes["tva"].index_type == "hnsw"
    assert loaded.indexes["tva"].vectors == vectors and loaded.indexes["tva"].num_items == 8
    assert torch.equal(loaded.indexes["tva"].search(queries, 8), index.search(queries, 8))

    shutil.copytree(tmp_path / "g" / "index", tmp_path / "old_index")
    rest = {m: type(f)(**{k: v[8:] for k, v in f.items()}) for m, f in media.items()}
    loaded.add(TESTER.ids(slice(8, 12)), **rest)  # extends and saves the index
    assert VideoGallery.load(tmp_path / "g").indexes["tva"].num_items == 12
    shutil.rmtree(tmp_path / "g" / "index")
    shutil.copytree(tmp_path / "old_index", tmp_path / "g" / "index")  # an index older than the gallery
    lagging = VideoGallery.load(tmp_path / "g", model=model)
    assert lagging.indexes["tva"].num_items == 12
    full = TESTER.gallery(model)
    stored = lagging.indexes["tva"].index
    stored = torch.from_numpy(stored.reconstruct_n(0, stored.ntotal))
    torch.testing.assert_close(stored, candidate_vectors(full, "tva", slice(None), vectors))


def test_positions_index_returns_each_item_once_at_its_best_position(model):
    gallery = TESTER.gallery(model)
    queries = query_vectors(TESTER.text_features(model))
    index = gallery.build_index("tva", index_type="flat", vectors="positions")
    found = index.search(queries, 5)
    positions = candidate_vectors(gallery, "tva", slice(None), "positions")
    best = (queries @ positions.T).view(queries.shape[0], len(gallery), -1).amax(-1)  # (queries, items)
    for row, scores in zip(found, best):
        assert row.unique().numel() == 5
        torch.testing.assert_close(scores[row], scores.topk(5).values)


def test_index_of_a_larger_gallery_is_refused(model, media, tmp_path):
    TESTER.gallery(model, path=tmp_path / "big").build_index("tv", index_type="flat")
    TESTER.gallery(model, slice(0, 4), tmp_path / "small")
    shutil.copytree(tmp_path / "big" / "index", tmp_path / "small" / "index")
    with pytest.raises(ValueError, match="belongs to another gallery"):
        VideoGallery.load(tmp_path / "small")


def test_index_errors(model, media, monkeypatch):
    gallery = VideoGallery.create(model)
    with pytest.raises(ValueError, match="empty"):
        gallery.build_index("tv")
    gallery.add(TESTER.ids(), **media)
    with pytest.raises(ValueError, match="index_type"):
        gallery.build_index("tv", index_type="lsh")
    with pytest.raises(ValueError, match="vectors"):
        gallery.build_index("tv", vectors="pooled")
    with pytest.raises(ValueError, match="'tv', 'ta', 'tva'"):
        gallery.build_index("va")
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match=r"transformers-valor\[retrieval\]"):
        require_faiss()
    with pytest.raises(ImportError, match="faiss"):
        gallery.build_index("tv")


def test_coarse_models_have_no_first_stage():
    gallery = TESTER.gallery(TESTER.create_model(contrastive_type="coarse"))
    for vectors in ("mean", "positions"):
        with pytest.raises(NotImplementedError, match="coarse"):
            gallery.build_index("tv", vectors=vectors)
