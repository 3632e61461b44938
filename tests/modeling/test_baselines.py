import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from dcinet_d2.modeling.losses import batch_hard_triplet_loss, contrastive_loss, oim_loss


def _unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=1)


def test_oim_by_hand():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    lut = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    queue = torch.tensor([[-1.0, 0.0]])
    # labelled row 0 (label 0): logits 2 * [1, 0, -1]; row 1 is unlabelled and ignored
    expected = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-2)))
    got = oim_loss(features, torch.tensor([0, -1]), lut, queue, scale=2.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    empty_queue = oim_loss(features, torch.tensor([1, -1]), lut, queue[:0], scale=2.0)
    assert empty_queue.item() == pytest.approx(math.log(1 + math.exp(2)), rel=1e-6)  # logits 2 * [1, 0], label 1
    x = features.clone().requires_grad_(True)
    none = oim_loss(x, torch.tensor([-1, -1]), lut, queue, 2.0)
    none.backward()
    assert none.item() == 0.0


def _slow_triplet(x, y, margin):
    total, count = 0.0, 0
    for i in range(len(y)):
        if y[i] < 0:
            continue
        pos = [1 - float(x[i] @ x[j]) for j in range(len(y)) if j != i and y[j] == y[i]]
        neg = [1 - float(x[i] @ x[j]) for j in range(len(y)) if y[j] >= 0 and y[j] != y[i]]
        if pos and neg:
            total += max(0.0, max(pos) - min(neg) + margin)
            count += 1
    return total / count


def test_batch_hard_triplet_against_a_loop():
    x = _unit(10, 4, seed=0)
    y = torch.tensor([0, 1, 0, 2, 1, -1, 3, 0, -1, 2])  # identity 3 has no positive: not an anchor
    got = batch_hard_triplet_loss(x, y, margin=0.3)
    assert got.item() == pytest.approx(_slow_triplet(x, y.tolist(), 0.3), rel=1e-12)


def test_triplet_by_hand_and_degenerate_batches():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    # anchor 0: d+ = 1, d- = 0.4 -> 0.9 ; anchor 1: d+ = 1, d- = 0.2 -> 1.1 ; anchor 2: no positive
    got = batch_hard_triplet_loss(x, torch.tensor([0, 0, 1]), margin=0.3)
    assert got.item() == pytest.approx(1.0, rel=1e-6)
    z = x.clone().requires_grad_(True)
    none = batch_hard_triplet_loss(z, torch.tensor([0, 1, -1]), margin=0.3)
    none.backward()
    assert none.item() == 0.0


def test_contrastive_against_a_loop_and_by_hand():
    x = _unit(8, 3, seed=1)
    y = torch.tensor([0, 1, 0, -1, 2, 1, 0, -1])
    idx = [i for i in range(8) if y[i] >= 0]
    terms = []
    for i, j in itertools.combinations(idx, 2):
        cos = float(x[i] @ x[j])
        terms.append((1 - cos) ** 2 if y[i] == y[j] else max(0.0, cos - 0.5) ** 2)
    assert contrastive_loss(x, y, 0.5).item() == pytest.approx(sum(terms) / len(terms), rel=1e-12)
    h = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6]])
    # pairs: (0,1) same: 0.4^2; (0,2) diff: (0.8-0.5)^2; (1,2) diff: (0.96-0.5)^2
    expected = (0.16 + 0.09 + 0.46 ** 2) / 3
    assert contrastive_loss(h, torch.tensor([0, 0, 1]), 0.5).item() == pytest.approx(expected, rel=1e-6)
    assert contrastive_loss(h, torch.tensor([0, -1, -1]), 0.5).item() == 0.0
