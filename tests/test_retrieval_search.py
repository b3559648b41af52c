"""Tests of `retrieval.search`: exhaustive search equals the model's full score matrix, and the two-stage search
equals the exhaustive one when the first stage returns the whole gallery."""

import pytest
import torch

from helpers import GalleryTester
from transformers_valor.retrieval import (
    VideoGallery,
    exhaustive_search,
    query_vectors,
    search,
    two_stage_search,
)

TESTER = GalleryTester(num_items=12)


@pytest.fixture(scope="module")
def model():
    return TESTER.create_model()


@pytest.fixture(scope="module")
def gallery(model, tmp_path_factory):
    built = TESTER.gallery(model)
    path = tmp_path_factory.mktemp("search") / "g"
    built.save(path, shard_size=5)  # three shards: blocks and gathers cross them
    return VideoGallery.load(path, model=model)


@pytest.fixture(scope="module")
def text(model):
    return TESTER.text_features(model)


def full_scores(model, group, text):
    media = TESTER.media_features(model)
    uses = {"tv": ("video",), "ta": ("audio",), "tva": ("video", "audio")}[group]
    query, candidates = model.group_features(group, text=text, **{m: media[m] for m in uses})
    return model.similarity(query, candidates)


@pytest.mark.parametrize("group", ["tv", "ta", "tva"])
def test_exhaustive_search_equals_the_full_score_matrix(model, gallery, text, group):
    with torch.no_grad():
        expected = full_scores(model, group, text)
    for top_k, block_size in ((None, 4), (3, 4), (3, 100)):
        hits = exhaustive_search(model, gallery, text, group, top_k=top_k, block_size=block_size)
        assert len(hits) == text.embeds.shape[0]
        for row, h in zip(expected, hits):
            order = torch.sort(row, descending=True, stable=True).indices[:top_k]
            assert h.rows.tolist() == order.tolist()
            torch.testing.assert_close(h.scores, row[order], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("vectors", ["mean", "positions"])
@pytest.mark.parametrize("index_type", ["flat", "ivf", "hnsw"])
@pytest.mark.parametrize("group", ["tv", "ta", "tva"])
def test_two_stage_equals_exhaustive_when_k_covers_the_gallery(
    model, gallery, text, group, index_type, vectors
):
    params = {"ivf_lists": 3, "nprobe": 3} if index_type == "ivf" else {}
    gallery.build_index(group, index_type=index_type, vectors=vectors, **params)
    exact = exhaustive_search(model, gallery, text, group)
    staged = two_stage_search(model, gallery, text, group, top_k=None, num_candidates=len(gallery))
    for a, b in zip(exact, staged):
        assert b.rows.tolist() == a.rows.tolist()
        torch.testing.assert_close(b.scores, a.scores, rtol=1e-5, atol=1e-6)
    top = two_stage_search(model, gallery, text, group, top_k=4, num_candidates=len(gallery))
    assert [h.rows.tolist() for h in top] == [h.rows[:4].tolist() for h in exact]


def test_two_stage_reranks_only_its_candidates(model, gallery, text):
    gallery.build_index("tva", index_type="flat")
    hits = two_stage_search(model, gallery, text, "tva", top_k=None, num_candidates=5)
    exact = exhaustive_search(model, gallery, text, "tva")
    candidates = gallery.indexes["tva"].search(query_vectors(text), 5)
    for h, c, e in zip(hits, candidates, exact):
        assert sorted(h.rows.tolist()) == sorted(c.tolist())
        lookup = dict(zip(e.rows.tolist(), e.scores.tolist()))
        assert h.scores.tolist() == pytest.approx([lookup[r] for r in h.rows.tolist()], rel=1e-5, abs=1e-6)
        assert torch.all(h.scores[:-1] >= h.scores[1:])


def test_search_picks_two_stages_only_with_an_index(model, text):
    memory = TESTER.gallery(model)
    exact = search(model, memory, text, "tv", top_k=3)
    assert [h.rows.tolist() for h in exact] == [
        h.rows.tolist() for h in exhaustive_search(model, memory, text, "tv", 3)
    ]
    with pytest.raises(ValueError, match="build_index"):
        search(model, memory, text, "tv", exhaustive=False)
    memory.build_index("tv", index_type="flat")
    staged = search(model, memory, text, "tv", top_k=3, num_candidates=12)
    assert [h.rows.tolist() for h in staged] == [h.rows.tolist() for h in exact]
    with pytest.raises(ValueError, match="cannot exceed"):
        search(model, memory, text, "tv", top_k=20, num_candidates=12)
    forced = search(model, memory, text, "tv", top_k=3, exhaustive=True)
    assert [h.rows.tolist() for h in forced] == [h.rows.tolist() for h in exact]


def test_queries_must_match_the_gallery(model, gallery, text):
    with pytest.raises(ValueError, match="'tv', 'ta', 'tva'"):
        exhaustive_search(model, gallery, text, "va")
    with pytest.raises(ValueError, match="width"):
        exhaustive_search(
            model, gallery, type(text)(embeds=torch.zeros(1, 3, 5), mask=torch.ones(1, 3)), "tv"
        )
