"""MGA scoring: the fine-grained score against a literal reference, chunking, masking and the InfoNCE loss."""

import pytest
import torch
import torch.nn.functional as F

from transformers_valor.losses import contrastive_loss, fine_grained_similarity, masked_softmax


def reference_fine_score(a, ma, wa_logits, b, mb, wb_logits):
    """VALOR_SPEC section 2 written out with loops over pairs and positions."""
    out = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64)
    for i in range(a.shape[0]):
        wa = torch.softmax(wa_logits[i].double().masked_fill(ma[i] == 0, float("-inf")), 0)
        for j in range(b.shape[0]):
            wb = torch.softmax(wb_logits[j].double().masked_fill(mb[j] == 0, float("-inf")), 0)
            s = torch.zeros(a.shape[1], b.shape[1], dtype=torch.float64)
            for x in range(a.shape[1]):
                for y in range(b.shape[1]):
                    s[x, y] = (a[i, x].double() @ b[j, y].double()) * ma[i, x] * mb[j, y]
            a_to_b = sum(wa[x] * s[x].max() for x in range(a.shape[1]))
            b_to_a = sum(wb[y] * s[:, y].max() for y in range(b.shape[1]))
            out[i, j] = (a_to_b + b_to_a) / 2
    return out


class FineScoreTester:
    """Random normalised features with ragged masks."""

    def __init__(self, num_a=5, num_b=6, t=4, v=3, dim=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.a = F.normalize(torch.randn(num_a, t, dim, generator=g), dim=-1)
        self.b = F.normalize(torch.randn(num_b, v, dim, generator=g), dim=-1)
        self.ma = torch.ones(num_a, t, dtype=torch.long)
        self.ma[1, 2:] = 0
        self.ma[3, 1:] = 0
        self.mb = torch.ones(num_b, v, dtype=torch.long)
        self.mb[0, 1:] = 0
        self.wa = torch.randn(num_a, t, generator=g)
        self.wb = torch.randn(num_b, v, generator=g)

    def args(self):
        return self.a, self.ma, self.wa, self.b, self.mb, self.wb


def test_fine_score_matches_reference():
    tester = FineScoreTester()
    got = fine_grained_similarity(*tester.args(), max_block_elements=None)
    torch.testing.assert_close(got.double(), reference_fine_score(*tester.args()), atol=1e-6, rtol=0)


@pytest.mark.parametrize("block", [1, 7, 40, 100])
def test_chunked_equals_unchunked(block):
    tester = FineScoreTester(num_a=9, num_b=11)
    full = fine_grained_similarity(*tester.args(), max_block_elements=None)
    chunked = fine_grained_similarity(*tester.args(), max_block_elements=block)
    torch.testing.assert_close(chunked, full, atol=1e-7, rtol=0)


def test_fully_masked_sequence_scores_zero_and_keeps_gradients_finite():
    tester = FineScoreTester()
    mb = tester.mb.clone()
    mb[2] = 0  # e.g. a clip set of a video without sound
    wb = tester.wb.clone().requires_grad_(True)
    a = tester.a.clone().requires_grad_(True)
    scores = fine_grained_similarity(a, tester.ma, tester.wa, tester.b, mb, wb)
    assert torch.isfinite(scores).all()
    # With B fully masked every s[i,2,x,y] is 0, so both halves of the score are 0.
    torch.testing.assert_close(scores[:, 2], torch.zeros(scores.shape[0]))
    scores.sum().backward()
    assert torch.isfinite(wb.grad).all() and torch.isfinite(a.grad).all()


def test_masked_softmax_zero_rows():
    w = masked_softmax(torch.randn(3, 4), torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]]))
    torch.testing.assert_close(w.sum(-1), torch.tensor([1.0, 0.0, 1.0]))
    assert (w[0, 2:] == 0).all()


def test_contrastive_loss_is_symmetric_infonce():
    logits = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
    targets = torch.arange(4)
    expected = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2
    torch.testing.assert_close(contrastive_loss(logits), expected)
    with pytest.raises(ValueError, match="square"):
        contrastive_loss(torch.randn(3, 4))


def test_bad_shapes_raise():
    tester = FineScoreTester()
    with pytest.raises(ValueError, match="mask_a"):
        fine_grained_similarity(tester.a, tester.ma[:, :2], tester.wa, tester.b, tester.mb, tester.wb)
    with pytest.raises(ValueError, match="widths differ"):
        fine_grained_similarity(tester.a, tester.ma, tester.wa, tester.b[..., :4], tester.mb, tester.wb)


# ------------------------------------------------------------------------------------------- the loss objects
def test_mga_loss_object_is_infonce_of_each_groups_scores():
    from helpers import ValorModelTester
    from transformers_valor.losses import MultimodalGroupingAlignmentLoss

    tester = ValorModelTester()
    valor = tester.create_model().valor
    inputs = tester.prepare_inputs()
    with torch.no_grad():
        features = {
            "text": valor.get_text_features(inputs["input_ids"], inputs["attention_mask"]),
            "video": valor.get_video_features(inputs["pixel_values_videos"]),
            "audio": valor.get_audio_features(inputs["input_features"], inputs["input_features_mask"]),
        }
        scale = valor.get_logit_scale()
        # Without a process group, gathering is a no-op: both settings give the local-batch loss.
        for loss_fn in (
            MultimodalGroupingAlignmentLoss(),
            MultimodalGroupingAlignmentLoss(gather_distributed=True),
        ):
            losses = loss_fn(valor, features, ["tv", "tva", "atv"], scale)
            assert list(losses) == ["mga_tv", "mga_tva", "mga_atv"]
            for group, value in losses.items():
                query, candidates = valor.group_features(group[4:], **features)
                expected = contrastive_loss(valor.similarity(query, candidates) * scale)
                torch.testing.assert_close(value, expected)


@pytest.mark.parametrize("objective", ["unimlm", "lm"])
def test_caption_loss_is_the_mean_over_labelled_tokens(objective):
    from transformers_valor.losses import CaptionLoss

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=generator)
    labels = torch.randint(0, 11, (2, 5), generator=generator)
    labels[0, 1] = labels[1, 3] = -100
    loss = CaptionLoss(objective, normalize_across_processes=True)(logits, labels)
    if objective == "lm":
        logits, labels = logits[:, :-1], labels[:, 1:]
    keep = labels != -100
    expected = F.cross_entropy(logits[keep], labels[keep])
    torch.testing.assert_close(loss, expected)
