import pytest
import torch

from dcinet_d2.modeling.losses import select_priority_pool

LABELS = torch.tensor([2, 5, 2])
# Rankings (own class excluded): sample 0: 7, 5, 1, 0, ...; sample 1: 2, 7, 9, 8, ...; sample 2: 3, 4, 5, 9, ...
SIMS = torch.tensor([
    [0.3, 0.4, 0.99, 0.1, 0.0, 0.8, -0.1, 0.9, -0.2, -0.3],
    [-0.5, -0.4, 0.95, -0.3, -0.2, 1.0, -0.1, 0.85, 0.6, 0.7],
    [0.1, 0.2, 0.9, 0.8, 0.7, 0.6, 0.3, 0.4, 0.0, 0.5],
])


def test_labels_first_then_hardest_round_robin():
    # rank 0: 7 (s0), 2 taken (s1), 3 (s2); rank 1: 5 taken, 7 taken, 4; rank 2: 1, 9
    assert select_priority_pool(LABELS, SIMS, 7).tolist() == [2, 5, 7, 3, 4, 1, 9]
    assert select_priority_pool(LABELS, SIMS, 6).tolist() == [2, 5, 7, 3, 4, 1]
    assert select_priority_pool(LABELS, SIMS, 2).tolist() == [2, 5]


def test_random_fill_after_a_per_sample_limit():
    gen = torch.Generator().manual_seed(0)
    pool = select_priority_pool(LABELS, SIMS, 7, gen, hard_per_sample=1)
    assert pool.tolist()[:4] == [2, 5, 7, 3]
    rest = pool.tolist()[4:]
    assert len(rest) == 3 and len(set(rest)) == 3 and set(rest) <= {0, 1, 4, 6, 8, 9}
    pool = select_priority_pool(LABELS, SIMS, 9, hard_per_sample=2)
    assert pool.tolist()[:5] == [2, 5, 7, 3, 4]
    rest = pool.tolist()[5:]
    assert len(rest) == 4 and len(set(rest)) == 4 and set(rest) <= {0, 1, 6, 8, 9}
    # the generator makes the random part reproducible, and different seeds pick differently
    picks = {tuple(select_priority_pool(LABELS, SIMS, 7, torch.Generator().manual_seed(s), hard_per_sample=1)
                   .tolist()) for s in range(20)}
    assert len(picks) > 1
    again = select_priority_pool(LABELS, SIMS, 7, torch.Generator().manual_seed(0), hard_per_sample=1)
    assert again.tolist() == select_priority_pool(LABELS, SIMS, 7, torch.Generator().manual_seed(0),
                                                  hard_per_sample=1).tolist()


def test_no_labelled_sample_gives_a_random_pool():
    pool = select_priority_pool(torch.zeros(0, dtype=torch.long), torch.zeros(0, 10), 4)
    assert pool.numel() == 4 and len(set(pool.tolist())) == 4


def test_allowed_restricts_negatives_but_never_the_labels():
    allowed = torch.ones(10, dtype=torch.bool)
    allowed[[7, 4, 2]] = False
    # rankings over allowed classes: s0: 5, 1, 0, ...; s1: 9, 8, ...; s2: 3, 5, 9, ...
    # rank 0: 5 taken, 9, 3; rank 1: 1, 8, 5 taken; rank 2: 0
    pool = select_priority_pool(LABELS, SIMS, 7, allowed=allowed)
    assert pool.tolist() == [2, 5, 9, 3, 1, 8, 0]
    few = torch.zeros(10, dtype=torch.bool)
    few[6] = True
    assert select_priority_pool(LABELS, SIMS, 7, allowed=few).tolist() == [2, 5, 6]
    assert select_priority_pool(LABELS, SIMS, 50, allowed=few).tolist() == [2, 5, 6]


def test_pool_size_at_least_t_gives_all_classes():
    assert select_priority_pool(LABELS, SIMS, 10).tolist() == list(range(10))
    assert select_priority_pool(LABELS, SIMS, 5532).tolist() == list(range(10))


def _slow_reference(labels, sims, pool_size):
    pool = []
    for y in labels:
        if y not in pool:
            pool.append(y)
    orders = [sorted((c for c in range(len(row)) if c != y), key=lambda c: -row[c]) for y, row in zip(labels, sims)]
    rank = 0
    while len(pool) < pool_size:
        for order in orders:
            if order[rank] not in pool and len(pool) < pool_size:
                pool.append(order[rank])
        rank += 1
    return pool


@pytest.mark.parametrize("seed", range(5))
def test_matches_a_sequential_round_robin_reference(seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 40, (12,), generator=g)
    sims = torch.randn(12, 40, generator=g)
    got = select_priority_pool(labels, sims, 25)
    assert got.tolist() == _slow_reference(labels.tolist(), sims.tolist(), 25)


def test_errors_name_the_config_key():
    with pytest.raises(ValueError, match=r"MODEL\.REID\.C2HEP\.POOL_SIZE = 1 is smaller than the 2 distinct"):
        select_priority_pool(LABELS, SIMS, 1, config_key="MODEL.REID.C2HEP.POOL_SIZE")
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=r"MODEL\.REID\.\*\.POOL_SIZE must be an integer >= 1"):
            select_priority_pool(LABELS, SIMS, bad)
    with pytest.raises(ValueError, match="labels must lie in"):
        select_priority_pool(torch.tensor([10]), torch.zeros(1, 10), 3)
