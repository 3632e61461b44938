import math

import pytest
import torch
import torch.nn.functional as F

from dcinet_d2.modeling.losses import olp_loss


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def test_value_on_a_2d_example_by_hand():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    positives = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    negatives = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    # anchor 1: d(a,p) = 0.6, d(a,n) = 0, -1 ; anchor 2: d(a,p) = 0.6, d(a,n) = 1, 0
    l1 = -math.log(math.exp(0.6) / (math.exp(0.6) + math.exp(0.0) + math.exp(-1.0)))
    l2 = -math.log(math.exp(0.6) / (math.exp(0.6) + math.exp(1.0) + math.exp(0.0)))
    assert olp_loss(anchors, positives, negatives).item() == pytest.approx((l1 + l2) / 2, rel=1e-6)
    # scale s multiplies every similarity
    l1s = math.log(1 + math.exp(2 * (0.0 - 0.6)) + math.exp(2 * (-1.0 - 0.6)))
    l2s = math.log(1 + math.exp(2 * (1.0 - 0.6)) + math.exp(2 * (0.0 - 0.6)))
    assert olp_loss(anchors, positives, negatives, scale=2.0).item() == pytest.approx((l1s + l2s) / 2, rel=1e-6)


def test_anchor_gradient_equals_the_seed_closed_form_at_scale_1():
    m, k, d = 4, 6, 5
    anchors = _unit(m, d, seed=1).requires_grad_(True)
    positives, negatives = _unit(m, d, seed=2), _unit(k, d, seed=3)
    olp_loss(anchors, positives, negatives, scale=1.0).backward()
    a = anchors.detach()
    for i in range(m):
        e_pos = torch.exp(a[i] @ positives[i])
        e_neg = torch.exp(negatives @ a[i])
        z = e_pos + e_neg.sum()
        q, q_hat = e_pos / z, e_neg / z
        expected = ((q - 1) * positives[i] + (q_hat[:, None] * negatives).sum(0)) / m
        torch.testing.assert_close(anchors.grad[i], expected, rtol=1e-10, atol=1e-12)


def test_shared_and_per_anchor_negatives_agree():
    m, k, d = 3, 7, 4
    anchors = _unit(m, d, seed=4).requires_grad_(True)
    positives, negatives = _unit(m, d, seed=5), _unit(k, d, seed=6)
    shared = olp_loss(anchors, positives, negatives, scale=10.0)
    (g_shared,) = torch.autograd.grad(shared, anchors)
    per_anchor = olp_loss(anchors, positives, negatives.expand(m, k, d), scale=10.0)
    (g_per,) = torch.autograd.grad(per_anchor, anchors)
    torch.testing.assert_close(shared, per_anchor)
    torch.testing.assert_close(g_shared, g_per)


def test_mask_equals_dropping_the_masked_negatives():
    m, k, d = 3, 5, 4
    anchors, positives, negatives = _unit(m, d, seed=7), _unit(m, d, seed=8), _unit(k, d, seed=9)
    mask = torch.tensor([[True, False, True, True, False], [True] * 5, [False, False, False, False, True]])
    got = olp_loss(anchors, positives, negatives, scale=3.0, negatives_mask=mask)
    rows = [olp_loss(anchors[i:i + 1], positives[i:i + 1], negatives[mask[i]], scale=3.0) for i in range(m)]
    torch.testing.assert_close(got, torch.stack(rows).mean())
    # a fully masked row has only its positive: loss 0 for that row
    none = torch.zeros(m, k, dtype=torch.bool)
    assert olp_loss(anchors, positives, negatives, negatives_mask=none).item() == 0.0


def test_stable_at_large_scale_and_empty_inputs():
    anchors, positives, negatives = _unit(2, 3, seed=10), _unit(2, 3, seed=11), _unit(4, 3, seed=12)
    big = olp_loss(anchors.float(), positives.float(), negatives.float(), scale=1e4)
    assert torch.isfinite(big)
    empty = torch.zeros(0, 3, requires_grad=True)
    zero = olp_loss(empty, empty, negatives.float())
    zero.backward()
    assert zero.item() == 0.0 and empty.grad is not None
    no_negatives = olp_loss(anchors, positives, negatives[:0])
    assert no_negatives.item() == 0.0


def test_bad_shapes_raise():
    a = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="negatives"):
        olp_loss(a, a, torch.zeros(4, 5))
    with pytest.raises(ValueError, match="negatives_mask"):
        olp_loss(a, a, torch.zeros(4, 3), negatives_mask=torch.ones(2, 3, dtype=torch.bool))
