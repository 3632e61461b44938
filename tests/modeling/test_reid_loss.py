import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.checkpoint import Checkpointer
from detectron2.config import get_cfg

from dcinet_d2.config import add_dcinet_config
from dcinet_d2.modeling import ReIDLoss
from dcinet_d2.modeling.losses import olp_loss

ALL = ["OLP", "HEP", "C2HEP", "OIM", "TRIPLET", "CONTRASTIVE"]
T, D = 12, 8


@pytest.fixture(scope="module")
def base_cfg():
    cfg = get_cfg()
    add_dcinet_config(cfg)
    cfg.MODEL.REID.EMBED_DIM = D
    cfg.MODEL.REID.OLP.DICT_SIZE = 32
    cfg.MODEL.REID.HEP.POOL_SIZE = 6
    cfg.MODEL.REID.C2HEP.POOL_SIZE = 6
    cfg.MODEL.REID.OIM.QUEUE_SIZE = 10
    return cfg


def _cfg(base, losses, **overrides):
    cfg = base.clone()
    cfg.MODEL.REID.LOSSES = losses
    for key, value in overrides.items():
        node = cfg.MODEL.REID
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return cfg


def _batch(seed=0):
    """Two images of 5 boxes: ids 1 and 4 appear in both, 7 only in image 0, two unlabelled boxes."""
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(10, D, generator=g), dim=1).requires_grad_(True)
    pids = torch.tensor([1, 4, 7, -1, 1, 4, 1, -1, 4, 9])
    images = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    return emb, pids, images


def test_every_configured_loss_is_finite_and_back_propagates(base_cfg):
    torch.manual_seed(0)
    module = ReIDLoss(_cfg(base_cfg, ALL), T)
    for step in range(2):
        emb, pids, images = _batch(step)
        losses = module(emb, pids, images)
        assert set(losses) == {f"loss_{n.lower()}" for n in ALL}
        assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
        sum(losses.values()).backward()
        assert emb.grad is not None and emb.grad.abs().sum() > 0
    assert module.hep_weight.grad is not None and module.hep_weight.grad.abs().sum() > 0
    assert losses["loss_olp"].item() > 0 and losses["loss_c2hep"].item() > 0


def test_olp_pairs_and_dictionary_match_an_explicit_computation(base_cfg):
    module = ReIDLoss(_cfg(base_cfg, ["OLP"], **{"OLP.SCALE": 5.0}), 0)  # no class count needed for OLP
    emb, pids, images = _batch(0)
    first = module(emb, pids, images)["loss_olp"]
    assert first.item() == 0.0  # empty dictionary: nothing to separate the positives from
    assert module.olp_dictionary.num_filled == 10  # unlabelled boxes pushed too (PUSH_UNLABELED)
    emb2, _, _ = _batch(1)
    got = module(emb2, pids, images)["loss_olp"]
    stored, stored_pids = emb.detach(), pids
    rows = []
    for a in range(10):
        for p in range(10):
            if pids[a] >= 0 and pids[a] == pids[p] and images[a] != images[p]:
                negatives = stored[stored_pids != pids[a]]
                rows.append(olp_loss(emb2[a:a + 1], emb2[p:p + 1], negatives, 5.0))
    # id 1: (0,6),(4,6),(6,0),(6,4); id 4: (1,5),(1,8),(5,1),(8,1); 7 and 9 have no pair
    assert len(rows) == 8
    torch.testing.assert_close(got, torch.stack(rows).mean())
    assert module.olp_dictionary.num_filled == 20


def test_olp_batch_negatives_add_the_steps_other_people_to_the_dictionary(base_cfg):
    module = ReIDLoss(_cfg(base_cfg, ["OLP"], **{"OLP.SCALE": 5.0, "OLP.BATCH_NEGATIVES": True}), 0)
    emb, pids, images = _batch(0)
    previous = None
    for step in range(2):
        emb, _, _ = _batch(step)
        got = module(emb, pids, images)["loss_olp"]
        rows = []
        for a in range(10):
            for p in range(10):
                if pids[a] >= 0 and pids[a] == pids[p] and images[a] != images[p]:
                    negatives = emb.detach()[pids != pids[a]]  # other ids and the unlabelled, this step
                    if previous is not None:
                        negatives = torch.cat([previous[pids != pids[a]], negatives])
                    rows.append(olp_loss(emb[a:a + 1], emb[p:p + 1], negatives, 5.0))
        # Unlike the dictionary-only loss (0 at the first step), the first step already has negatives.
        assert got.item() > 0.1
        torch.testing.assert_close(got, torch.stack(rows).mean())
        got.backward()
        previous = emb.detach()


def test_push_unlabeled_false_keeps_only_labelled(base_cfg):
    module = ReIDLoss(_cfg(base_cfg, ["OLP"], **{"OLP.PUSH_UNLABELED": False}), 0)
    module(*_batch(0))
    assert module.olp_dictionary.num_filled == 8
    assert -1 not in module.olp_dictionary.labels.tolist()


def test_c2hep_and_hep_values_and_center_updates(base_cfg):
    cfg = _cfg(base_cfg, ["HEP", "C2HEP"], **{"C2HEP.WEIGHT": 2.0, "C2HEP.RENORM": False, "C2HEP.MOMENTUM": 0.5})
    module = ReIDLoss(cfg, T)
    emb, pids, images = _batch(0)
    losses = module(emb, pids, images)
    # first step: every center is zero, so every cosine is 0 and each label competes with the other batch
    # labels only (uninitialised centers are not negatives): log(#distinct labels) = log 4, times WEIGHT 2
    assert losses["loss_c2hep"].item() == pytest.approx(2.0 * torch.log(torch.tensor(4.0)).item(), rel=1e-6)
    centers = module.c2hep_centers
    assert centers.initialized.nonzero().flatten().tolist() == [1, 4, 7, 9]
    e = emb.detach()
    # class 1 is seen three times in this first step: its center is their mean (the batch-mean rule)
    torch.testing.assert_close(centers.centers[1], (e[0] + e[4] + e[6]) / 3)
    torch.testing.assert_close(centers.centers[9], e[9])


def test_hep_with_a_full_pool_is_the_linear_classifier_cross_entropy(base_cfg):
    """The seed's HEP: classifier scores W x + b in the softmax (not cosines)."""
    module = ReIDLoss(_cfg(base_cfg, ["HEP"], **{"HEP.POOL_SIZE": T}), T)
    with torch.no_grad():
        module.hep_weight.copy_(torch.randn(T, D, generator=torch.Generator().manual_seed(3)))
        module.hep_bias.copy_(torch.linspace(-1, 1, T))
    emb, pids, images = _batch(0)
    got = module(emb, pids, images)["loss_hep"]
    lab = pids >= 0
    torch.testing.assert_close(got, F.cross_entropy(emb[lab] @ module.hep_weight.t() + module.hep_bias, pids[lab]))
    got.backward()
    assert module.hep_bias.grad.abs().sum() > 0


def test_hep_cosine_option_is_the_cosine_classifier_cross_entropy(base_cfg):
    module = ReIDLoss(_cfg(base_cfg, ["HEP"], **{"HEP.POOL_SIZE": T, "HEP.SCALE": 7.0, "HEP.LOGITS": "cosine"}), T)
    emb, pids, images = _batch(0)
    got = module(emb, pids, images)["loss_hep"]
    lab = pids >= 0
    cos = F.normalize(emb[lab], dim=1) @ F.normalize(module.hep_weight, dim=1).t()
    torch.testing.assert_close(got, F.cross_entropy(7.0 * cos, pids[lab]))


def test_no_labelled_box_gives_graph_connected_zeros(base_cfg):
    module = ReIDLoss(_cfg(base_cfg, ALL), T)
    emb = F.normalize(torch.randn(4, D), dim=1).requires_grad_(True)
    losses = module(emb, torch.full((4,), -1), torch.tensor([0, 0, 1, 1]))
    assert all(v.item() == 0.0 for v in losses.values())
    sum(losses.values()).backward()
    assert emb.grad is not None and module.hep_weight.grad is not None
    assert module.olp_dictionary.num_filled == 4 and int(module.oim_table.queue_count) == 4


def test_state_dict_round_trip_with_detectron2_checkpointer(base_cfg, tmp_path):
    cfg = _cfg(base_cfg, ["OLP", "C2HEP", "HEP", "OIM"])
    torch.manual_seed(0)
    module = ReIDLoss(cfg, T)
    module(*_batch(0))
    keys = set(module.state_dict())
    assert {"olp_dictionary.features", "olp_dictionary.labels", "olp_dictionary.ptr", "c2hep_centers.centers",
            "c2hep_centers.initialized", "hep_weight", "oim_table.lut", "oim_table.queue"} <= keys
    Checkpointer(module, save_dir=str(tmp_path)).save("model")
    torch.manual_seed(1)
    fresh = ReIDLoss(cfg, T)
    Checkpointer(fresh).load(str(tmp_path / "model.pth"))
    for name, value in module.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[name]), name
    # the resumed module computes the same next step
    emb, pids, images = _batch(3)
    a, b = module(emb, pids, images), fresh(emb, pids, images)
    for k in ("loss_olp", "loss_oim"):
        torch.testing.assert_close(a[k], b[k])


@pytest.mark.parametrize("losses, overrides, num_ids, key", [
    (["OLP", "ARCFACE"], {}, T, "MODEL.REID.LOSSES"),
    ("OLP", {}, T, "MODEL.REID.LOSSES"),
    ([], {}, T, "MODEL.REID.LOSSES"),
    (["OLP", "OLP"], {}, T, "MODEL.REID.LOSSES"),
    (["HEP"], {"HEP.POOL_SIZE": 0}, T, "MODEL.REID.HEP.POOL_SIZE"),
    (["C2HEP"], {"C2HEP.POOL_SIZE": 2.5}, T, "MODEL.REID.C2HEP.POOL_SIZE"),
    (["OLP"], {"OLP.DICT_SIZE": 0}, T, "MODEL.REID.OLP.DICT_SIZE"),
    (["OLP"], {"OLP.SCALE": 0.0}, T, "MODEL.REID.OLP.SCALE"),
    (["C2HEP"], {}, 0, "MODEL.REID.NUM_IDENTITIES"),
    (["OIM"], {}, 0, "MODEL.REID.NUM_IDENTITIES"),
    (["C2HEP"], {"C2HEP.MOMENTUM": 1.5}, T, "MODEL.REID.C2HEP.MOMENTUM"),
    (["OIM"], {"OIM.QUEUE_SIZE": 0}, T, "MODEL.REID.OIM.QUEUE_SIZE"),
    (["TRIPLET"], {"TRIPLET.WEIGHT": -1.0}, T, "MODEL.REID.TRIPLET.WEIGHT"),
])
def test_bad_configs_name_the_key(base_cfg, losses, overrides, num_ids, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        ReIDLoss(_cfg(base_cfg, losses, **overrides), num_ids)


def test_unknown_loss_message_lists_the_allowed_names(base_cfg):
    with pytest.raises(ValueError, match=r"allowed: \['OLP', 'HEP', 'C2HEP', 'OIM', 'TRIPLET', 'CONTRASTIVE'\]"):
        ReIDLoss(_cfg(base_cfg, ["NOPE"]), T)


def test_forward_rejects_a_pool_smaller_than_the_batch_and_bad_inputs(base_cfg):
    module = ReIDLoss(_cfg(base_cfg, ["C2HEP"], **{"C2HEP.POOL_SIZE": 3}), T)
    with pytest.raises(ValueError, match=r"MODEL\.REID\.C2HEP\.POOL_SIZE = 3 is smaller than the 4"):
        module(*_batch(0))
    emb, pids, images = _batch(0)
    with pytest.raises(ValueError, match="NUM_IDENTITIES"):
        module(emb, torch.full((10,), T), images)
    with pytest.raises(ValueError, match="EMBED_DIM"):
        module(torch.zeros(10, D + 1), pids, images)


def _distributed_worker(rank, world_size, port, base_cfg, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    module = ReIDLoss(_cfg(base_cfg, ["OLP", "C2HEP"]), T)
    emb, pids, images = _batch(rank)
    module(emb, pids, images)
    torch.save(module.state_dict(), f"{out_dir}/rank{rank}.pth")
    dist.destroy_process_group()


@pytest.mark.slow
def test_memories_are_identical_across_ranks_and_equal_one_big_batch(base_cfg, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_distributed_worker, args=(2, port, base_cfg, str(tmp_path)), nprocs=2)
    states = [torch.load(tmp_path / f"rank{r}.pth", weights_only=True) for r in range(2)]
    torch.manual_seed(0)
    single = ReIDLoss(_cfg(base_cfg, ["OLP", "C2HEP"]), T)
    (e0, p0, _), (e1, p1, _) = _batch(0), _batch(1)
    single._update_memories(torch.cat([e0, e1]).detach(), torch.cat([p0, p1]))
    for name, value in single.state_dict().items():
        assert torch.equal(states[0][name], states[1][name]), name
        torch.testing.assert_close(states[0][name], value, msg=name)


def test_olp_gradient_reaches_anchors_only(base_cfg):
    """The seed's OLP gradient is dL/dx_a: with DETACH_POSITIVE (default) each pair member gets the gradient
    of its anchor row only; the old behaviour (False) doubles the pull between positives."""
    cfg = _cfg(base_cfg, ["OLP"])
    g = torch.Generator().manual_seed(0)
    dictionary = F.normalize(torch.randn(6, D, generator=g), dim=1)
    for detach in (True, False):
        module = ReIDLoss(_cfg(cfg, ["OLP"], **{"OLP.DETACH_POSITIVE": detach}), T)
        module.olp_dictionary.push(dictionary, torch.arange(2, 8))
        emb = F.normalize(torch.randn(2, D, generator=torch.Generator().manual_seed(1)), dim=1).requires_grad_(True)
        module(emb, torch.tensor([0, 0]), torch.tensor([0, 1]))["loss_olp"].backward()
        a = emb.detach().clone().requires_grad_(True)
        unit = F.normalize(a, dim=1)  # ReIDLoss normalises its input (the gradient on the unit sphere)
        rows = olp_loss(unit, unit.detach().flip(0), dictionary, module.olp_scale)  # positives as constants
        rows.backward()
        if detach:
            torch.testing.assert_close(emb.grad, a.grad)
        else:
            assert not torch.allclose(emb.grad, a.grad, atol=1e-4)


def test_default_hard_bound_leaves_the_random_fill_room(base_cfg):
    """With the default HARD_PER_SAMPLE a CUHK-SYSU-like batch (6 labelled boxes, pool 100 of 5532) takes
    at most 5 hard classes per sample, so random classes fill the rest; with 0 (no limit) the hard ones
    fill the whole pool."""
    from dcinet_d2.modeling.losses import select_priority_pool

    cfg = get_cfg()
    add_dcinet_config(cfg)
    labels = torch.tensor([3, 3, 10, 10, 42, 77])
    sims = torch.randn(6, 5532, generator=torch.Generator().manual_seed(0))
    bound = cfg.MODEL.REID.HEP.HARD_PER_SAMPLE
    assert bound > 0 and cfg.MODEL.REID.C2HEP.HARD_PER_SAMPLE == bound  # 0 would mean "no limit"
    masked = sims.clone()
    masked[:, labels.unique()] = -float("inf")  # the batch's own classes are not negatives
    hard = set(masked.topk(bound, dim=1).indices.flatten().tolist())  # each sample's `bound` hardest
    pool = select_priority_pool(labels, sims, 100, torch.Generator().manual_seed(1), hard_per_sample=bound)
    # Labels first, then exactly the bounded hard classes, then at least 100 - 4 - 6 * 5 random ones.
    assert len(pool) == 100 and set(pool[:4].tolist()) == set(labels.tolist())
    assert set(pool[4:4 + len(hard)].tolist()) == hard and len(hard) <= 6 * bound
    assert len(pool) - 4 - len(hard) >= 100 - 4 - 6 * bound  # the random fill ran
    unbounded = select_priority_pool(labels, sims, 100, hard_per_sample=None)
    top_all = set(sims.topk(100, dim=1).indices.flatten().tolist())
    assert set(unbounded.tolist()) <= top_all | set(labels.tolist())


def test_training_records_each_unweighted_memory_loss_beside_its_uniform_value(base_cfg):
    """metrics.json gets reid/<loss> = loss / WEIGHT (comparable with reid/<loss>_uniform whatever the weight)."""
    from detectron2.utils.events import EventStorage

    module = ReIDLoss(_cfg(base_cfg, ["OLP", "C2HEP"], **{"OLP.WEIGHT": 0.01, "C2HEP.WEIGHT": 0.5}), T)
    with EventStorage() as storage:
        for step in range(2):
            losses = module(*_batch(step))
        latest = {k: v[0] for k, v in storage.latest().items()}
    assert latest["reid/olp"] == pytest.approx(losses["loss_olp"].item() / 0.01, rel=1e-5)
    assert latest["reid/c2hep"] == pytest.approx(losses["loss_c2hep"].item() / 0.5, rel=1e-5)
    assert latest["reid/olp"] > 0 and "reid/olp_uniform" in latest and "reid/c2hep_uniform" in latest


@pytest.mark.parametrize("logits, learns", [("linear", True), ("linear_unit", False)])
def test_hep_scores_on_the_raw_embedding_learn_at_the_papers_rate(base_cfg, logits, learns):
    """Fixed features (16 identities, BatchNorm-like scale: norm about sqrt(D)), SGD at the paper's lr 0.001:
    HEP on the raw embedding falls far below its uniform value ln 16 within 300 steps; on the unit embedding
    its scores cannot exceed |w| + |b| and it stays near uniform."""
    torch.manual_seed(0)
    n_id, dim = 16, 64
    cfg = _cfg(base_cfg, ["HEP"], **{"HEP.POOL_SIZE": n_id, "HEP.LOGITS": logits})
    cfg.MODEL.REID.EMBED_DIM = dim
    module = ReIDLoss(cfg, n_id)
    centers = torch.randn(n_id, dim)
    pids = torch.arange(n_id).repeat(2)
    feats = centers[pids] + 0.5 * torch.randn(len(pids), dim)  # per-dimension variance about 1
    opt = torch.optim.SGD(module.parameters(), lr=0.001, momentum=0.9)
    for _ in range(300):
        loss = module(feats, pids, torch.arange(len(pids)) % 2)["loss_hep"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    uniform = math.log(n_id)
    if learns:
        assert loss.item() < 0.1 * uniform
    else:
        assert loss.item() > 0.9 * uniform
