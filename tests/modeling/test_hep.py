import math

import pytest
import torch
import torch.nn.functional as F

from dcinet_d2.modeling.losses import hep_loss


def test_hand_example():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    # softmax over classes {1, 3} only: -log(e^2 / (e^2 + e^4))
    value = hep_loss(logits, torch.tensor([1]), torch.tensor([3, 1]))
    assert value.item() == pytest.approx(math.log(1 + math.exp(2.0)), rel=1e-6)


def test_equals_cross_entropy_over_the_pool_columns():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 20, generator=g, requires_grad=True)
    labels = torch.tensor([3, 7, 3, 11, 0, 7])
    pool = torch.tensor([7, 3, 15, 0, 11, 19, 4])
    targets = torch.tensor([pool.tolist().index(y) for y in labels.tolist()])
    expected = F.cross_entropy(logits[:, pool], targets)
    got = hep_loss(logits, labels, pool)
    torch.testing.assert_close(got, expected)
    got.backward()
    outside = torch.ones(20, dtype=torch.bool)
    outside[pool] = False
    assert torch.all(logits.grad[:, outside] == 0)  # classes outside the pool take no part
    assert torch.all(logits.grad[:, pool] != 0)


def test_errors_and_empty_batch():
    logits = torch.randn(2, 5)
    with pytest.raises(ValueError, match=r"labels \[4\] are not in the priority pool"):
        hep_loss(logits, torch.tensor([1, 4]), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="repeats"):
        hep_loss(logits, torch.tensor([1, 2]), torch.tensor([1, 2, 1]))
    with pytest.raises(ValueError, match="0..4"):
        hep_loss(logits, torch.tensor([1, 2]), torch.tensor([1, 2, 9]))
    empty = torch.zeros(0, 5, requires_grad=True)
    value = hep_loss(empty, torch.zeros(0, dtype=torch.long), torch.tensor([1, 2]))
    value.backward()
    assert value.item() == 0.0
