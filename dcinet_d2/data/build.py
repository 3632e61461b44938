"""The loaders of person search: training (paired-identity batches, sampler.py) and test (a gallery split
followed by its query split)."""
import copy
import logging

from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.build import build_batch_data_loader
from detectron2.data.common import DatasetFromList, ToIterableDataset
from detectron2.utils import comm

from .mapper import PersonSearchDatasetMapper
from .sampler import PairedIdentitySampler, SeededMapDataset

logger = logging.getLogger(__name__)


def person_search_test_dicts(gallery_name, gt_boxes=False, whole_image=False):
    """Dataset dicts of a gallery split followed by its query split (MetadataCatalog ``query_set``).

    Query dicts carry ``boxes`` ([1, 4] XYXY: the query box) and ``query_index``. In the ground-truth
    mode the gallery dicts carry their annotated boxes as ``boxes``; in the whole-image mode the image box.
    """
    meta = MetadataCatalog.get(gallery_name)
    if not hasattr(meta, "query_set"):
        raise ValueError(f"dataset {gallery_name!r} has no query_set in its metadata: not a person-search "
                         "gallery split (register it with dcinet_d2.data)")
    gallery = [copy.copy(d) for d in DatasetCatalog.get(gallery_name)]
    for d in gallery:
        if gt_boxes:
            d["boxes"] = [a["bbox"] for a in d.get("annotations", [])]
        elif whole_image:
            d["boxes"] = [[0.0, 0.0, float(d["width"]), float(d["height"])]]
    queries = []
    for q in DatasetCatalog.get(meta.query_set):
        q = copy.copy(q)
        q["boxes"] = [q["annotations"][0]["bbox"]]
        queries.append(q)
    logger.info("person search test set %s: %d gallery images, %d queries", gallery_name, len(gallery),
                len(queries))
    return gallery + queries


def resolve_num_identities(cfg):
    """Set MODEL.REID.NUM_IDENTITIES from DATASETS.TRAIN when it is 0 (labelled ids are 0..T-1)."""
    if cfg.MODEL.REID.NUM_IDENTITIES > 0:
        return cfg.MODEL.REID.NUM_IDENTITIES
    total = 0
    for name in cfg.DATASETS.TRAIN:
        num = MetadataCatalog.get(name).get("num_identities", None)
        if num is None:
            num = 1 + max((a.get("person_id", -1) for d in DatasetCatalog.get(name)
                           for a in d.get("annotations", [])), default=-1)
        total = max(total, num)
    if total < 1:
        raise ValueError(f"MODEL.REID.NUM_IDENTITIES = 0 and DATASETS.TRAIN = {list(cfg.DATASETS.TRAIN)} "
                         "holds no labelled identity: set MODEL.REID.NUM_IDENTITIES")
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.MODEL.REID.NUM_IDENTITIES = total
    if was_frozen:
        cfg.freeze()
    return total


def build_person_search_test_loader(cfg, dataset_name):
    """Detectron2's test loader (sharded across ranks) over a gallery split and its queries."""
    ps = cfg.TEST.PERSON_SEARCH
    dicts = person_search_test_dicts(dataset_name, gt_boxes=ps.GT_BOXES, whole_image=ps.WHOLE_IMAGE)
    return build_detection_test_loader(dicts, mapper=PersonSearchDatasetMapper(cfg, is_train=False),
                                       num_workers=cfg.DATALOADER.NUM_WORKERS)


def build_person_search_train_loader(cfg, mapper=None):
    """The training loader: paired-identity batches (DATALOADER.PAIRED.ENABLED) or Detectron2's default.

    Args:
        cfg: a config with :func:`dcinet_d2.config.add_dcinet_config` keys.
        mapper (callable or None): dataset-dict mapper; None: ``PersonSearchDatasetMapper(cfg, True)``.
    Returns:
        iterable of list[dict]: per-GPU batches of SOLVER.IMS_PER_BATCH / world-size mapped dicts.
    """
    if mapper is None:
        mapper = PersonSearchDatasetMapper(cfg, True)
    if not cfg.DATALOADER.PAIRED.ENABLED:
        return build_detection_train_loader(cfg, mapper=mapper)
    dicts = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    )
    world_size = comm.get_world_size()
    if cfg.SOLVER.IMS_PER_BATCH % world_size:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH}: expected a multiple of the world size {world_size}"
        )
    sampler = PairedIdentitySampler(
        dicts, cfg.SOLVER.IMS_PER_BATCH // world_size, group_size=cfg.DATALOADER.PAIRED.GROUP_SIZE
    )
    # The sampler shards across loader workers by whole batches itself; ToIterableDataset's default
    # per-index sharding would split the groups.
    dataset = ToIterableDataset(SeededMapDataset(DatasetFromList(dicts, copy=False), mapper), sampler,
                                shard_sampler=False)
    # Aspect-ratio grouping would reorder the stream and split the groups.
    return build_batch_data_loader(
        dataset, None, cfg.SOLVER.IMS_PER_BATCH, aspect_ratio_grouping=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
