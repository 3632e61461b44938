"""Test-time loading for person search: one loader over a gallery split and its query split."""
import copy
import logging

from detectron2.data import DatasetCatalog, MetadataCatalog

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
    from detectron2.data import build_detection_test_loader

    from .mapper import PersonSearchDatasetMapper

    ps = cfg.TEST.PERSON_SEARCH
    dicts = person_search_test_dicts(dataset_name, gt_boxes=ps.GT_BOXES, whole_image=ps.WHOLE_IMAGE)
    return build_detection_test_loader(dicts, mapper=PersonSearchDatasetMapper(cfg, is_train=False),
                                       num_workers=cfg.DATALOADER.NUM_WORKERS)
