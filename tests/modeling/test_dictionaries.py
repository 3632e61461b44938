import math

import pytest
import torch

from dcinet_d2.modeling.dictionaries import EMPTY_SLOT, ClassCenters, FeatureDictionary, OIMTable


def _rows(*values):
    return torch.tensor([[float(v), -float(v)] for v in values])


def test_fifo_order_with_wrap_around():
    d = FeatureDictionary(4, 2)
    assert d.num_filled == 0 and d.labels.tolist() == [EMPTY_SLOT] * 4
    d.push(_rows(10, 11, 12), torch.tensor([0, 1, -1]))
    assert d.labels.tolist() == [0, 1, -1, EMPTY_SLOT] and int(d.ptr) == 3
    d.push(_rows(13, 14, 15), torch.tensor([2, 3, 4]))  # slots 3, 0, 1
    assert d.labels.tolist() == [3, 4, -1, 2] and int(d.ptr) == 2
    assert d.features[:, 0].tolist() == [14, 15, 12, 13]
    # more than K at once: writes go to slots 2, 3, 0, 1, 2, 3, so the last K survive as 22..25 in slots 0..3
    d.push(_rows(20, 21, 22, 23, 24, 25), torch.tensor([5, 6, 7, 8, 9, 5]))
    assert d.features[:, 0].tolist() == [22, 23, 24, 25] and d.labels.tolist() == [7, 8, 9, 5]
    assert int(d.ptr) == 0 and d.num_filled == 4


def test_negatives_skip_empty_slots_and_the_anchor_identity():
    d = FeatureDictionary(5, 2)
    d.push(_rows(1, 2, 3), torch.tensor([7, -1, 3]))
    feats, mask = d.negatives_for(torch.tensor([7, 3, 9]))
    assert feats[:, 0].tolist() == [1, 2, 3]  # the two empty slots are not returned
    assert mask.tolist() == [[False, True, True], [True, True, False], [True, True, True]]


def test_feature_dictionary_rejects_bad_input():
    with pytest.raises(ValueError, match="MODEL.REID.OLP.DICT_SIZE"):
        FeatureDictionary(0, 2)
    d = FeatureDictionary(3, 2)
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        d.push(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="-1"):
        d.push(torch.zeros(1, 2), torch.tensor([-2]))


def test_class_center_sequential_update_by_hand():
    c = ClassCenters(3, 2, momentum=0.5, renorm=False, rule="sequential")
    c.update(torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]]), torch.tensor([0, 0, -1]))
    # first-seen initialisation, then 0.5 * (1, 0) + 0.5 * (0, 1); the unlabelled feature is skipped
    assert c.centers.tolist() == [[0.5, 0.5], [0.0, 0.0], [0.0, 0.0]]
    assert c.initialized.tolist() == [True, False, False]
    c.update(torch.tensor([[0.0, 2.0]]), torch.tensor([2]))
    assert c.centers[2].tolist() == [0.0, 2.0]  # no renorm: the first feature as given


def test_class_center_sequential_update_with_renorm():
    c = ClassCenters(1, 2, momentum=0.5, renorm=True, rule="sequential")
    c.update(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 0, 0]))
    s = 1 / math.sqrt(2)
    x, y = 0.5 * s + 0.5, 0.5 * s
    norm = math.hypot(x, y)
    torch.testing.assert_close(c.centers[0], torch.tensor([x / norm, y / norm]))
    with pytest.raises(ValueError, match="0..0"):
        c.update(torch.zeros(1, 2), torch.tensor([1]))


def test_class_center_batch_mean_update_by_hand():
    """Default rule: one update per class per step, by the mean of the class's features in the step."""
    c = ClassCenters(3, 2, momentum=0.5, renorm=False)
    c.update(torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]]), torch.tensor([0, 0, -1]))
    assert c.centers.tolist() == [[0.5, 0.5], [0.0, 0.0], [0.0, 0.0]]  # first seen: the mean itself
    c.update(torch.tensor([[1.0, 1.0], [3.0, 1.0], [0.0, 2.0]]), torch.tensor([0, 0, 2]))
    # 0.5 * (0.5, 0.5) + 0.5 * mean((1, 1), (3, 1)) = (1.25, 0.75); the sequential rule gives (2.125, 0.875)
    assert c.centers.tolist() == [[1.25, 0.75], [0.0, 0.0], [0.0, 2.0]]
    assert c.initialized.tolist() == [True, False, True]


def test_class_center_batch_mean_equals_sequential_for_one_feature_per_class():
    g = torch.Generator().manual_seed(0)
    a, b = ClassCenters(50, 8, 0.5, True), ClassCenters(50, 8, 0.5, True, rule="sequential")
    for _ in range(5):
        labels = torch.randperm(50, generator=g)[:20]
        labels[:3] = -1
        x = torch.randn(20, 8, generator=g)
        a.update(x, labels)
        b.update(x, labels)
    torch.testing.assert_close(a.centers, b.centers)
    assert torch.equal(a.initialized, b.initialized)


def test_oim_table_lut_momentum_and_circular_queue():
    t = OIMTable(2, 2, queue_size=3, momentum=0.5)
    t.update(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]), torch.tensor([1, 1, -1]))
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(t.lut, torch.tensor([[0.0, 0.0], [s, s]]))
    assert t.queue_entries().tolist() == [[pytest.approx(0.6), pytest.approx(0.8)]]
    t.update(_rows(1, 2, 3), torch.tensor([-1, -1, -1]))  # slots 1, 2, 0
    assert t.queue_entries()[:, 0].tolist() == [3, 1, 2] and int(t.queue_count) == 3


def test_buffers_survive_a_save_load_round_trip(tmp_path):
    d, c, t = FeatureDictionary(4, 2), ClassCenters(3, 2, 0.5, True), OIMTable(3, 2, 4, 0.5)
    feats, labels = _rows(1, 2, 3), torch.tensor([0, 2, -1])
    for m in (d, c, t):
        m.update(feats, labels) if not isinstance(m, FeatureDictionary) else m.push(feats, labels)
    path = tmp_path / "memories.pth"
    torch.save({"d": d.state_dict(), "c": c.state_dict(), "t": t.state_dict()}, path)
    state = torch.load(path, weights_only=True)
    assert set(state["d"]) == {"features", "labels", "ptr"}
    assert set(state["c"]) == {"centers", "initialized"}
    d2, c2, t2 = FeatureDictionary(4, 2), ClassCenters(3, 2, 0.5, True), OIMTable(3, 2, 4, 0.5)
    d2.load_state_dict(state["d"])
    c2.load_state_dict(state["c"])
    t2.load_state_dict(state["t"])
    for a, b in ((d, d2), (c, c2), (t, t2)):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), name
    # resumed memories continue exactly where the saved ones were
    d.push(_rows(7, 8), torch.tensor([1, 1]))
    d2.push(_rows(7, 8), torch.tensor([1, 1]))
    assert torch.equal(d.features, d2.features) and int(d2.ptr) == 1
