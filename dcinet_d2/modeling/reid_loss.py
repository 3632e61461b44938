"""ReIDLoss: the configured re-id losses (MODEL.REID.LOSSES) and the memories they keep.

forward(embeddings, pids, image_ids) returns the weighted losses, then updates the memories with the batch
(the loss of a step sees the memories as they were before the step):
- OLP: pairs (a, p) of labelled samples of one identity in different images, each direction a row; the
  negatives are the FIFO feature dictionary minus the anchor's own identity. The batch's features (labelled,
  and unlabelled when OLP.PUSH_UNLABELED) are pushed afterwards.
- HEP: a learnable classifier W [T, D], b [T]; logits W x + b on the embedding x before L2 normalisation
  (the seed's classifier scores; HEP.LOGITS "linear_unit": on the unit embedding, "cosine": HEP.SCALE *
  cos(x, W)); pool by hardness on the cosines to W's rows.
Every other loss and memory sees the L2-normalised embedding.
- C2HEP: the class centers; pool by hardness on cos(x, centers) among initialised centers (a never-seen
  center is zero and enters the pool only as the label of a sample in the batch); centers updated afterwards.
- OIM, TRIPLET, CONTRASTIVE: the baselines (losses/*.py).
Under distributed training the memories are updated with the features of all ranks (gathered in rank
order), so every rank keeps identical memories, as a single large batch would.
"""
import logging
import math
from numbers import Real
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.utils import comm

from .dictionaries import ClassCenters, FeatureDictionary, OIMTable
from .losses import (
    batch_hard_triplet_loss,
    c2hep_loss,
    contrastive_loss,
    hep_loss,
    oim_loss,
    olp_loss,
    select_priority_pool,
)

__all__ = ["ReIDLoss", "ALLOWED_LOSSES"]

logger = logging.getLogger(__name__)

ALLOWED_LOSSES = ("OLP", "HEP", "C2HEP", "OIM", "TRIPLET", "CONTRASTIVE")
# Losses that classify over the T labelled identities, and so need MODEL.REID.NUM_IDENTITIES >= 1.
CLASSIFICATION_LOSSES = ("HEP", "C2HEP", "OIM")


def _require_int(value, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _require_number(value, key: str, low: float = float("-inf"), high: float = float("inf"),
                    low_open: bool = False, high_open: bool = False) -> float:
    ok = isinstance(value, Real) and not isinstance(value, bool)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        bound = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{key} must be a number in {bound}, got {value!r}")
    return float(value)


def _require_bool(value, key: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def _parse_loss_names(names) -> tuple:
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names:
        raise ValueError(
            f"MODEL.REID.LOSSES must be a non-empty list of names from {list(ALLOWED_LOSSES)}, got {names!r}"
        )
    unknown = [n for n in names if n not in ALLOWED_LOSSES]
    if unknown:
        raise ValueError(f"MODEL.REID.LOSSES has unknown loss(es) {unknown}; allowed: {list(ALLOWED_LOSSES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"MODEL.REID.LOSSES repeats a loss: {list(names)}")
    return tuple(names)


def _log_uniform(name: str, value) -> None:
    """Record a memory loss's uniform value (log of its number of valid candidates: the loss of a model that
    cannot tell them apart) in the training's EventStorage, as ``reid/<name>_uniform`` in metrics.json."""
    _log_scalar(f"reid/{name}_uniform", value)


def _log_scalar(key: str, value) -> None:
    """Put a scalar in the training's EventStorage (metrics.json); nothing outside a training loop."""
    try:
        from detectron2.utils.events import get_event_storage

        storage = get_event_storage()
    except AssertionError:  # outside a training loop
        return
    storage.put_scalar(key, float(value))


def _gather_across_ranks(features: torch.Tensor, pids: torch.Tensor):
    """All ranks' (features [N, D], pids [N]) in rank order; the inputs themselves on a single process."""
    if comm.get_world_size() == 1:
        return features, pids
    parts = comm.all_gather((features.detach().cpu(), pids.cpu()))
    return (torch.cat([p[0] for p in parts]).to(features.device),
            torch.cat([p[1] for p in parts]).to(pids.device))


class ReIDLoss(nn.Module):
    """The re-id losses of MODEL.REID.LOSSES with their dictionaries, centers and classifier as submodules.

    Args:
        cfg (CfgNode): a config with add_dcinet_config's keys.
        num_identities (int): T, the number of labelled training identities (needed by HEP, C2HEP, OIM).
    """

    def __init__(self, cfg, num_identities: int):
        super().__init__()
        reid = cfg.MODEL.REID
        self.loss_names = _parse_loss_names(list(reid.LOSSES))
        self.embed_dim = _require_int(reid.EMBED_DIM, "MODEL.REID.EMBED_DIM", 1)
        if any(n in CLASSIFICATION_LOSSES for n in self.loss_names):
            num_identities = _require_int(num_identities, "MODEL.REID.NUM_IDENTITIES", 1)
        self.num_identities = num_identities
        self.weights = {n: _require_number(reid[n].WEIGHT, f"MODEL.REID.{n}.WEIGHT", 0.0) for n in self.loss_names}
        for name in self.loss_names:
            getattr(self, f"_build_{name.lower()}")(reid[name])
        logger.info("Re-id losses %s with weights %s", list(self.loss_names), self.weights)

    def _build_olp(self, node) -> None:
        self.olp_scale = _require_number(node.SCALE, "MODEL.REID.OLP.SCALE", 0.0, low_open=True)
        self.olp_push_unlabeled = _require_bool(node.PUSH_UNLABELED, "MODEL.REID.OLP.PUSH_UNLABELED")
        self.olp_detach_positive = _require_bool(node.DETACH_POSITIVE, "MODEL.REID.OLP.DETACH_POSITIVE")
        self.olp_batch_negatives = _require_bool(node.BATCH_NEGATIVES, "MODEL.REID.OLP.BATCH_NEGATIVES")
        size = _require_int(node.DICT_SIZE, "MODEL.REID.OLP.DICT_SIZE", 1)
        self.olp_dictionary = FeatureDictionary(size, self.embed_dim)

    def _build_hep(self, node) -> None:
        self.hep_pool_size = _require_int(node.POOL_SIZE, "MODEL.REID.HEP.POOL_SIZE", 1)
        self.hep_hard_per_sample = _require_int(node.HARD_PER_SAMPLE, "MODEL.REID.HEP.HARD_PER_SAMPLE", 0)
        self.hep_scale = _require_number(node.SCALE, "MODEL.REID.HEP.SCALE", 0.0, low_open=True)
        if node.LOGITS not in ("linear", "linear_unit", "cosine"):
            raise ValueError(f"MODEL.REID.HEP.LOGITS must be 'linear', 'linear_unit' or 'cosine', got {node.LOGITS!r}")
        self.hep_logits = node.LOGITS
        self.hep_weight = nn.Parameter(torch.randn(self.num_identities, self.embed_dim) * 0.01)
        self.hep_bias = nn.Parameter(torch.zeros(self.num_identities))

    def _build_c2hep(self, node) -> None:
        self.c2hep_pool_size = _require_int(node.POOL_SIZE, "MODEL.REID.C2HEP.POOL_SIZE", 1)
        self.c2hep_hard_per_sample = _require_int(node.HARD_PER_SAMPLE, "MODEL.REID.C2HEP.HARD_PER_SAMPLE", 0)
        self.c2hep_lambda = _require_number(node.LAMBDA, "MODEL.REID.C2HEP.LAMBDA", 0.0, low_open=True)
        momentum = _require_number(node.MOMENTUM, "MODEL.REID.C2HEP.MOMENTUM", 0.0, 1.0)
        renorm = _require_bool(node.RENORM, "MODEL.REID.C2HEP.RENORM")
        self.c2hep_centers = ClassCenters(self.num_identities, self.embed_dim, momentum, renorm, node.UPDATE)

    def _build_oim(self, node) -> None:
        self.oim_scale = _require_number(node.SCALE, "MODEL.REID.OIM.SCALE", 0.0, low_open=True)
        momentum = _require_number(node.MOMENTUM, "MODEL.REID.OIM.MOMENTUM", 0.0, 1.0, high_open=True)
        queue = _require_int(node.QUEUE_SIZE, "MODEL.REID.OIM.QUEUE_SIZE", 1)
        self.oim_table = OIMTable(self.num_identities, self.embed_dim, queue, momentum)

    def _build_triplet(self, node) -> None:
        self.triplet_margin = _require_number(node.MARGIN, "MODEL.REID.TRIPLET.MARGIN", 0.0)

    def _build_contrastive(self, node) -> None:
        self.contrastive_margin = _require_number(node.MARGIN, "MODEL.REID.CONTRASTIVE.MARGIN", -1.0, 1.0)

    def forward(self, embeddings: torch.Tensor, pids: torch.Tensor, image_ids: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Weighted re-id losses of a training batch, then the memory updates.

        Args:
            embeddings (Tensor[n, D]): re-id embeddings of the batch's person boxes before L2 normalisation
                (the head's output; unit rows are fine too): HEP's linear scores take them as they are, the
                other losses and the memories their L2-normalised rows.
            pids (LongTensor[n]): identity 0..T-1 of each box, -1 = unlabelled person.
            image_ids (LongTensor[n]): index of each box's source image in the batch.

        Returns:
            dict[str, Tensor[]]: "loss_olp", "loss_hep", "loss_c2hep", "loss_oim", "loss_triplet",
            "loss_contrastive" for the configured losses, each multiplied by its WEIGHT; a configured loss
            with nothing to compare (e.g. no pair) is a zero still connected to the graph.
        """
        self._check_inputs(embeddings, pids, image_ids)
        raw, embeddings = embeddings, F.normalize(embeddings, dim=1)
        losses = {}
        for name in self.loss_names:
            x = raw if name == "HEP" else embeddings
            value = getattr(self, f"_loss_{name.lower()}")(x, pids, image_ids)
            losses[f"loss_{name.lower()}"] = self.weights[name] * value
            _log_scalar(f"reid/{name.lower()}", value.detach())  # unweighted: comparable with its uniform value
        self._update_memories(embeddings, pids)
        return losses

    def _check_inputs(self, embeddings, pids, image_ids) -> None:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embed_dim:
            raise ValueError(
                f"ReIDLoss: embeddings must be [n, MODEL.REID.EMBED_DIM = {self.embed_dim}], "
                f"got {tuple(embeddings.shape)}"
            )
        if pids.shape != embeddings.shape[:1] or image_ids.shape != embeddings.shape[:1]:
            raise ValueError(
                f"ReIDLoss: pids {tuple(pids.shape)} and image_ids {tuple(image_ids.shape)} must be "
                f"[n] = [{embeddings.shape[0]}]"
            )
        if pids.numel() and int(pids.min()) < -1:
            raise ValueError("ReIDLoss: pids must be identities >= 0 or -1 (unlabelled)")
        if self.num_identities and pids.numel() and int(pids.max()) >= self.num_identities:
            raise ValueError(
                f"ReIDLoss: pid {int(pids.max())} is out of range for MODEL.REID.NUM_IDENTITIES = "
                f"{self.num_identities}"
            )

    def _loss_olp(self, embeddings, pids, image_ids):
        labelled = pids >= 0
        pairs = (pids[:, None] == pids[None, :]) & labelled[:, None] & (image_ids[:, None] != image_ids[None, :])
        anchors, positives = torch.nonzero(pairs, as_tuple=True)
        if anchors.numel() == 0:
            return embeddings.sum() * 0.0
        negatives, mask = self.olp_dictionary.negatives_for(pids[anchors])
        if self.olp_batch_negatives:
            negatives, mask = self._with_batch_negatives(negatives.to(embeddings), mask, embeddings, pids, anchors)
        # The seed's gradient is dL/dx_a only: the positive is a target, as the dictionary entries are.
        # Each member of a pair is still an anchor in its own row.
        positive = embeddings[positives].detach() if self.olp_detach_positive else embeddings[positives]
        valid = mask.sum(dim=1) if mask is not None else torch.full_like(anchors, len(negatives))
        _log_uniform("olp", torch.log1p(valid.float()).mean())
        self._log_olp_agreement(embeddings[anchors], embeddings[positives], negatives.to(embeddings), mask)
        return olp_loss(embeddings[anchors], positive, negatives.to(embeddings), self.olp_scale, mask)

    @staticmethod
    def _with_batch_negatives(negatives, mask, embeddings, pids, anchors):
        """Append the batch's samples [n, D] (detached) to the dictionary's negatives [K', D]; per anchor, those
        of another identity or unlabelled are used (mask [m, K' + n]). The batch's pushed features are only
        readable by the next step's loss, so without this every negative is from an earlier step."""
        own = pids[None, :] == pids[anchors][:, None]  # [m, n]; the anchor itself is of its own identity
        batch_mask = ~own | (pids[None, :] < 0)
        if mask is None:
            mask = torch.ones(len(anchors), len(negatives), dtype=torch.bool, device=embeddings.device)
        return torch.cat([negatives, embeddings.detach()]), torch.cat([mask.to(batch_mask.device), batch_mask], 1)

    @staticmethod
    @torch.no_grad()
    def _log_olp_agreement(anchors, positives, negatives, mask) -> None:
        """Probes in metrics.json: the mean cosine of anchor and positive (reid/olp_pos_cos) against that of
        anchor and its dictionary negatives (reid/olp_neg_cos). OLP above its uniform value means the
        positive is less similar than the average negative (docs/METHOD.md, "I-Net's shared box head")."""
        _log_scalar("reid/olp_pos_cos", (anchors * positives).sum(dim=1).mean())
        if len(negatives):
            cos = anchors @ negatives.t()
            keep = mask if mask is not None else torch.ones_like(cos, dtype=torch.bool)
            if bool(keep.any()):
                _log_scalar("reid/olp_neg_cos", cos[keep].mean())

    def _loss_hep(self, embeddings, pids, image_ids):
        labelled = pids >= 0
        if not bool(labelled.any()):
            return (embeddings.sum() + self.hep_weight.sum() + self.hep_bias.sum()) * 0.0
        x, y = embeddings[labelled], pids[labelled]  # x before L2 normalisation
        unit = F.normalize(x, dim=1)
        cos = unit @ F.normalize(self.hep_weight, dim=1).t()
        pool = select_priority_pool(
            y, cos.detach(), self.hep_pool_size, hard_per_sample=self.hep_hard_per_sample or None,
            config_key="MODEL.REID.HEP.POOL_SIZE",
        )
        _log_uniform("hep", math.log(len(pool)))
        # The seed: classifier scores s_t = w_t . x + b_t. On the unit embedding ("linear_unit") no score can
        # exceed |w_t| + |b_t| (docs/METHOD.md, "HEP"); "cosine": the scaled cosine classifier (C2HEP-like).
        if self.hep_logits == "cosine":
            logits = self.hep_scale * cos
        else:
            scored = unit if self.hep_logits == "linear_unit" else x
            logits = scored @ self.hep_weight.t() + self.hep_bias
        return hep_loss(logits, y, pool)

    def _loss_c2hep(self, embeddings, pids, image_ids):
        labelled = pids >= 0
        if not bool(labelled.any()):
            return embeddings.sum() * 0.0
        x, y = embeddings[labelled], pids[labelled]
        centers = self.c2hep_centers.centers.to(x)
        with torch.no_grad():
            sims = F.normalize(x, dim=1) @ F.normalize(centers, dim=1).t()
        pool = select_priority_pool(
            y, sims, self.c2hep_pool_size, hard_per_sample=self.c2hep_hard_per_sample or None,
            allowed=self.c2hep_centers.initialized, config_key="MODEL.REID.C2HEP.POOL_SIZE",
        )
        _log_uniform("c2hep", math.log(len(pool)))
        return c2hep_loss(x, y, centers, pool, self.c2hep_lambda)

    def _loss_oim(self, embeddings, pids, image_ids):
        table = self.oim_table
        return oim_loss(embeddings, pids, table.lut.to(embeddings), table.queue_entries().to(embeddings),
                        self.oim_scale)

    def _loss_triplet(self, embeddings, pids, image_ids):
        return batch_hard_triplet_loss(embeddings, pids, self.triplet_margin)

    def _loss_contrastive(self, embeddings, pids, image_ids):
        return contrastive_loss(embeddings, pids, self.contrastive_margin)

    @torch.no_grad()
    def _update_memories(self, embeddings, pids) -> None:
        if not any(n in ("OLP", "C2HEP", "OIM") for n in self.loss_names):
            return
        features, labels = _gather_across_ranks(embeddings.detach(), pids)
        if "OLP" in self.loss_names:
            keep = labels >= 0 if not self.olp_push_unlabeled else labels >= -1
            self.olp_dictionary.push(features[keep], labels[keep])
        if "C2HEP" in self.loss_names:
            self.c2hep_centers.update(features, labels)
        if "OIM" in self.loss_names:
            self.oim_table.update(features, labels)
