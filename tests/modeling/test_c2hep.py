import math

import pytest
import torch
import torch.nn.functional as F

from dcinet_d2.modeling.losses import c2hep_loss


def test_equals_cross_entropy_of_scaled_cosine_to_pool_centers():
    g = torch.Generator().manual_seed(1)
    features = F.normalize(torch.randn(5, 8, generator=g), dim=1).requires_grad_(True)
    centers = torch.randn(12, 8, generator=g) * 3  # not unit: the loss must use the cosine
    labels = torch.tensor([4, 9, 4, 0, 2])
    pool = torch.tensor([0, 2, 4, 9, 7, 11])
    cos = F.cosine_similarity(features[:, None, :], centers[pool][None, :, :], dim=2)
    targets = torch.tensor([pool.tolist().index(y) for y in labels.tolist()])
    expected = F.cross_entropy(30.0 * cos, targets)
    got = c2hep_loss(features, labels, centers, pool, scale=30.0)
    torch.testing.assert_close(got, expected)
    got.backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()


def test_hand_example_with_a_zero_center():
    features = torch.tensor([[1.0, 0.0]])
    centers = torch.tensor([[0.0, 2.0], [1.0, 1.0], [0.0, 0.0]])
    # cosines to centers 1, 2, 0: 1/sqrt(2), 0 (zero center), 0 ; label 1, scale 2
    c = 1 / math.sqrt(2)
    expected = -math.log(math.exp(2 * c) / (math.exp(2 * c) + 1 + 1))
    got = c2hep_loss(features, torch.tensor([1]), centers, torch.tensor([1, 2, 0]), scale=2.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_bad_inputs():
    with pytest.raises(ValueError, match="centers"):
        c2hep_loss(torch.zeros(2, 3), torch.tensor([0, 1]), torch.zeros(4, 5), torch.tensor([0, 1]), 1.0)
    with pytest.raises(ValueError, match="not in the priority pool"):
        c2hep_loss(torch.ones(2, 3), torch.tensor([0, 3]), torch.ones(4, 3), torch.tensor([0, 1]), 1.0)
