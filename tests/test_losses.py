"""MGA scoring: the fine-grained score against a literal reference and the naive formulation (values and
gradients, across block sizes and masks), masking and the InfoNCE loss."""

import pytest
import torch
import torch.nn.functional as F

from transformers_valor.losses import (
    CPU_BLOCK_ELEMENTS,
    QuestionAnsweringLoss,
    _block_shape,
    contrastive_loss,
    fine_grained_similarity,
    masked_softmax,
    naive_fine_grained_similarity,
)


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
    """
    Random normalised features with ragged masks: a few fixed short rows or, with `ragged`, a random length per
    sequence (0 included, so some sequences of both sides are fully masked).
    """

    def __init__(self, num_a=5, num_b=6, t=4, v=3, dim=8, seed=0, ragged=False):
        g = torch.Generator().manual_seed(seed)
        self.a = F.normalize(torch.randn(num_a, t, dim, generator=g), dim=-1)
        self.b = F.normalize(torch.randn(num_b, v, dim, generator=g), dim=-1)
        if ragged:
            lengths_a = torch.randint(0, t + 1, (num_a,), generator=g)
            lengths_b = torch.randint(0, v + 1, (num_b,), generator=g)
            lengths_a[0] = lengths_b[-1] = 0
            self.ma = (torch.arange(t) < lengths_a[:, None]).long()
            self.mb = (torch.arange(v) < lengths_b[:, None]).long()
        else:
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
    reference = reference_fine_score(*tester.args())
    got = fine_grained_similarity(*tester.args(), max_block_elements=None)
    torch.testing.assert_close(got.double(), reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        naive_fine_grained_similarity(*tester.args()).double(), reference, atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("block", [1, 7, 40, 100, 999, None])
def test_blocked_equals_naive(block):
    tester = FineScoreTester(num_a=9, num_b=11, t=6, v=5, dim=16, seed=1, ragged=True)
    naive = naive_fine_grained_similarity(*tester.args())
    blocked = fine_grained_similarity(*tester.args(), max_block_elements=block)
    torch.testing.assert_close(blocked, naive, atol=1e-6, rtol=0)
    assert (blocked[0] == 0).all() and (blocked[:, -1] == 0).all()  # fully masked sequences score 0


def test_cpu_cache_blocks_equal_naive():
    # More similarity values than one CPU block, at the default bound: the cache-sized blocks are used.
    tester = FineScoreTester(num_a=140, num_b=100, t=32, v=10, dim=32, seed=2, ragged=True)
    assert 140 * 100 * 32 * 10 > CPU_BLOCK_ELEMENTS
    naive = naive_fine_grained_similarity(*tester.args())
    torch.testing.assert_close(fine_grained_similarity(*tester.args()), naive, atol=1e-6, rtol=0)


@pytest.mark.parametrize("num_a,num_b", [(1, 300), (300, 1), (40, 40)])
def test_either_side_larger_and_unmasked_sides_equal_naive(num_a, num_b):
    # One query against a gallery (the side roles are swapped inside) and the reverse, with every position of
    # the candidates valid (read as a view) and then with ragged masks.
    tester = FineScoreTester(num_a=num_a, num_b=num_b, t=7, v=5, dim=16, seed=6, ragged=True)
    a, ma, wa, b, _, wb = tester.args()
    for mb in (torch.ones_like(tester.mb), tester.mb):
        naive = naive_fine_grained_similarity(a, ma, wa, b, mb, wb)
        got = fine_grained_similarity(a, ma, wa, b, mb, wb)
        assert got.shape == (num_a, num_b)
        torch.testing.assert_close(got, naive, atol=1e-6, rtol=0)
    grad_out = torch.randn(num_a, num_b, generator=torch.Generator().manual_seed(7))

    def gradients(scorer):
        leaves = [x.clone().requires_grad_(True) for x in (a, wa, b, wb)]
        scorer(leaves[0], ma, leaves[1], leaves[2], tester.mb, leaves[3]).backward(grad_out)
        return [x.grad for x in leaves]

    for got, want in zip(gradients(fine_grained_similarity), gradients(naive_fine_grained_similarity)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("block", [1, 30, 400, None])
def test_blocked_gradients_equal_naive(block):
    tester = FineScoreTester(num_a=7, num_b=8, t=5, v=4, dim=16, seed=3, ragged=True)
    grad_out = torch.randn(7, 8, generator=torch.Generator().manual_seed(4))

    def gradients(scorer, **kwargs):
        a, ma, wa, b, mb, wb = (x.clone() for x in tester.args())
        leaves = [x.requires_grad_(True) for x in (a, wa, b, wb)]
        scorer(a, ma, wa, b, mb, wb, **kwargs).backward(grad_out)
        return [x.grad for x in leaves]

    expected = gradients(naive_fine_grained_similarity)
    for got, want in zip(gradients(fine_grained_similarity, max_block_elements=block), expected):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_bfloat16_stays_bfloat16():
    tester = FineScoreTester(num_a=9, num_b=11, t=6, v=5, dim=16, seed=5, ragged=True)
    a, ma, wa, b, mb, wb = tester.args()
    half = fine_grained_similarity(a.bfloat16(), ma, wa.bfloat16(), b.bfloat16(), mb, wb.bfloat16(), 40)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), naive_fine_grained_similarity(*tester.args()), atol=2e-2, rtol=0)


@pytest.mark.parametrize("t,v", [(32, 10), (1, 1), (7, 300)])
@pytest.mark.parametrize("budget", [1, 100, 2**16, 2**20, 2**22])
def test_block_shape_respects_the_bound(t, v, budget):
    for num_a, num_b in [(1, 1), (3, 5000), (5000, 3), (8000, 8000)]:
        rows, cols = _block_shape(num_a, t, num_b, v, budget)
        assert 1 <= rows <= num_a and 1 <= cols <= num_b
        assert rows * cols * t * v <= max(budget, t * v)  # one pair is the smallest block


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


@pytest.mark.parametrize("objective", ["unimlm", "lm"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_caption_loss_on_labelled_hidden_states_equals_the_full_head(objective, smoothing):
    from transformers_valor.losses import CaptionLoss

    torch.manual_seed(0)
    head = torch.nn.Linear(6, 11)
    hidden = torch.randn(3, 5, 6, requires_grad=True)
    labels = torch.randint(0, 11, (3, 5))
    labels[0, :2] = labels[2, 4] = -100
    loss = CaptionLoss(objective, label_smoothing=smoothing)
    full = loss(head(hidden), labels)
    (full_grad,) = torch.autograd.grad(full, hidden)
    seen = []
    partial = loss.from_hidden_states(lambda x: seen.append(x.shape) or head(x), hidden, labels)
    (partial_grad,) = torch.autograd.grad(partial, hidden)
    torch.testing.assert_close(partial, full)
    torch.testing.assert_close(partial_grad, full_grad)
    aligned = labels[:, 1:] if objective == "lm" else labels
    assert seen == [torch.Size([int((aligned != -100).sum()), 6])]  # the head saw only the labelled positions


def test_question_answering_loss_follows_the_reference():
    """`forward_qa_single`: per-answer mean of the token losses, then the mean over answers, or with tiled answers
    `sum(weight * answer loss) / number of questions`; the `lm` objective shifts the labels."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, 11, generator=generator)
    labels = torch.full((4, 5), -100)
    labels[0, 1:4] = torch.tensor([3, 4, 5])
    labels[1, 2] = 6
    labels[2, 1:3] = torch.tensor([7, 8])
    labels[3, 1:5] = torch.tensor([1, 2, 3, 4])
    per_answer = []
    for row in range(4):
        positions = (labels[row] != -100).nonzero().flatten()
        per_answer.append(F.cross_entropy(logits[row, positions], labels[row, positions]))
    per_answer = torch.stack(per_answer)
    loss = QuestionAnsweringLoss("unimlm")
    torch.testing.assert_close(loss(logits, labels), per_answer.mean())
    weights = torch.tensor([0.6, 0.4, 1.0, 1.0])  # question 1 tiled over two answers
    torch.testing.assert_close(
        loss(logits, labels, weights, num_questions=3), (per_answer * weights).sum() / 3
    )
    shifted = labels.clone()
    shifted[:, 1:] = labels[:, :-1]  # `lm` reads labels one position later
    shifted[:, 0] = -100
    torch.testing.assert_close(
        QuestionAnsweringLoss("lm")(logits, shifted), loss(logits[:, :-1], labels[:, :-1])
    )
    with pytest.raises(ValueError, match="no labelled token"):
        loss(logits, torch.full((4, 5), -100))
    with pytest.raises(ValueError, match="num_questions"):
        loss(logits, labels, weights)
