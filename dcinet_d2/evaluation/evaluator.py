"""PersonSearchEvaluator: Detectron2's DatasetEvaluator for person search (detection and search together).

It consumes the outputs of one test loader over a gallery split followed by its query split
(``dcinet_d2.data.build_person_search_test_loader``): gallery outputs hold detections with embeddings,
query outputs (inputs with ``query_index``) the embedding of the query box. Works under distributed
inference: every rank keeps its share, the main process gathers and scores.
"""
import logging
import os
from collections import OrderedDict

import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, DatasetEvaluators
from detectron2.utils import comm

from .offline import evaluate_search_results
from .plots import plot_cmc, plot_gallery_size_curve
from .results import save_results

logger = logging.getLogger(__name__)

# Above this mean cosine between gallery detections the embeddings have collapsed (all boxes look alike).
COLLAPSED_COSINE = 0.95


def mean_pairwise_cosine(embeddings: torch.Tensor) -> float:
    """Mean cosine similarity over the n (n - 1) ordered pairs of distinct rows of ``embeddings`` [n, D] (rows
    normalised here; zero rows, which have no direction, left out), from the sum of the unit rows u:
    |sum u|^2 = n + sum over pairs of u_i . u_j. NaN when fewer than 2 rows are non-zero."""
    norms = embeddings.double().norm(dim=1)
    units = embeddings.double()[norms > 0] / norms[norms > 0, None]
    n = units.shape[0]
    if n < 2:
        return float("nan")
    total = units.sum(dim=0)
    return float((total @ total - (units * units).sum()) / (n * (n - 1)))


class PersonSearchEvaluator(DatasetEvaluator):
    def __init__(self, dataset_name, output_dir=None, *, gallery_sizes=(100,), det_thresh=0.5,
                 save=True, cbgm=False, cbgm_k1=0, cbgm_k2=0):
        """
        Args:
            dataset_name: a gallery split registered by dcinet_d2.data (metadata: dataset_format, root).
            output_dir: where ``search_results.pth`` goes (None: not written).
            gallery_sizes: CUHK-SYSU gallery sizes to report; the first is reported as mAP / top1.
            det_thresh: detections below this score are ignored by the search and detection metrics.
            cbgm: also report every search metric re-scored with CBGM (:mod:`.cbgm`), named with the suffix
                ``@cbgm`` (``mAP@cbgm``, ``top1@gallery500@cbgm``, ...), beside the plain ones.
            cbgm_k1, cbgm_k2: CBGM's k1, k2 (0: SeqNet's for the dataset format).
        """
        meta = MetadataCatalog.get(dataset_name)
        self._format, self._root = meta.dataset_format, meta.root
        # Results key gallery images by base name, MOT frames by their path under the root (the dicts'
        # image_id): every sequence has a 000001.jpg.
        self._key_by_path = self._format == "mot"
        self._shared_ids = bool(meta.get("shared_ids", False))
        self._dataset_name = dataset_name
        self._output_dir = output_dir if save else None
        self._settings = self._protocol_settings(self._format, gallery_sizes, self._shared_ids)
        self._det_thresh = det_thresh
        self._cbgm = {"cbgm": bool(cbgm), "cbgm_k1": cbgm_k1 or None, "cbgm_k2": cbgm_k2 or None}
        self.reset()

    def reset(self):
        self._gallery, self._queries = {}, {}

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            inst = out["instances"].to("cpu")
            if "query_index" in inp:
                self._queries[inp["query_index"]] = inst.reid_embeddings[0]
            else:
                key = inp["image_id"] if self._key_by_path else os.path.basename(inp["file_name"])
                self._gallery[key] = {
                    "boxes": inst.pred_boxes.tensor.float(), "scores": inst.scores.float(),
                    "embeddings": inst.reid_embeddings.float()}

    def _gathered(self):
        comm.synchronize()
        gallery, queries = {}, {}
        for g, q in zip(comm.gather(self._gallery), comm.gather(self._queries)):
            gallery.update(g)
            queries.update(q)
        return gallery, queries

    def evaluate(self):
        gallery, queries = self._gathered()
        if not comm.is_main_process():
            return {}
        if sorted(queries) != list(range(len(queries))):
            raise ValueError(f"{self._dataset_name}: query outputs are not a full 0..Q-1 range")
        results = {"gallery": gallery, "queries": torch.stack([queries[i] for i in range(len(queries))])}
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            save_results(os.path.join(self._output_dir, "search_results.pth"), results)
        return OrderedDict(search=self._metrics(results))

    @staticmethod
    def _protocol_settings(dataset_format, gallery_sizes, shared_ids=False):
        """(metric-name suffix, evaluate_search_results keywords) of each reported setting; the first is
        the headline (no suffix)."""
        if dataset_format == "cuhk_sysu":
            return [("" if i == 0 else f"@gallery{n}", {"gallery_size": n}) for i, n in enumerate(gallery_sizes)]
        if dataset_format == "prw":
            return [("", {"cross_camera": False}), ("@cross_camera", {"cross_camera": True})]
        if dataset_format == "mot":
            return [("", {"shared_ids": shared_ids})]
        return [("", {})]

    def _metrics(self, results):
        metrics, outputs = {}, []
        for suffix, kwargs in self._settings:
            out = evaluate_search_results(results, self._format, self._root, det_thresh=self._det_thresh,
                                          **kwargs, **self._cbgm)
            outputs.append((suffix, kwargs, out))
            for key in ("mAP", "top1", "top5", "top10"):
                metrics[key + suffix] = out[key]
                if "cbgm" in out:
                    metrics[key + suffix + "@cbgm"] = out["cbgm"][key]
        metrics.update({k: outputs[0][2][k] for k in ("det_ap", "det_recall") if k in outputs[0][2]})
        metrics["embed_mean_cos"] = self._embedding_spread(results)
        if self._output_dir:
            self._plot(outputs)
        return metrics

    def _embedding_spread(self, results) -> float:
        """Mean cosine between the gallery's detections above det_thresh; warns when they have collapsed."""
        kept = [g["embeddings"][g["scores"] >= self._det_thresh] for g in results["gallery"].values()]
        kept = torch.cat(kept) if kept else torch.zeros(0, 1)
        cos = mean_pairwise_cosine(kept)
        zero = int((kept.norm(dim=1) == 0).sum())
        if zero:
            logger.warning("%s: %d of %d gallery detections have an all-zero re-id embedding (no direction: they "
                           "score 0 against every query)", self._dataset_name, zero, len(kept))
        if cos > COLLAPSED_COSINE:
            logger.warning("%s: the re-id embeddings have collapsed: mean cosine %.3f between gallery detections "
                           "(1 = all alike), so the search metrics are near chance; the model's re-id branch did "
                           "not learn", self._dataset_name, cos)
        return cos

    def _plot(self, outputs):
        """CMC curves of every setting; for CUHK-SYSU with several gallery sizes, mAP / top-1 against size."""
        curves = {suffix.lstrip("@") or "headline": out["cmc"] for suffix, _, out in outputs}
        curves.update({(suffix.lstrip("@") or "headline") + " + CBGM": out["cbgm"]["cmc"]
                       for suffix, _, out in outputs if "cbgm" in out})
        plot_cmc(curves, os.path.join(self._output_dir, "cmc.png"), title=f"CMC: {self._dataset_name}")
        if self._format == "cuhk_sysu" and len(outputs) > 1:
            plot_gallery_size_curve({kw["gallery_size"]: out for _, kw, out in outputs},
                                    os.path.join(self._output_dir, "gallery_size.png"))


class GalleryCOCOEvaluator(COCOEvaluator):
    """COCO-style detection AP on the gallery images only (query inputs share the loader)."""

    def process(self, inputs, outputs):
        pairs = [(i, o) for i, o in zip(inputs, outputs) if "query_index" not in i]
        if pairs:
            super().process(*map(list, zip(*pairs)))


def build_person_search_evaluator(cfg, dataset_name, output_dir):
    """The evaluators of a gallery split: search metrics, plus COCO-style AP unless boxes are given."""
    ps = cfg.TEST.PERSON_SEARCH
    evaluators = [PersonSearchEvaluator(dataset_name, output_dir, gallery_sizes=ps.GALLERY_SIZES,
                                        det_thresh=ps.DET_THRESH, save=ps.SAVE_RESULTS, cbgm=ps.CBGM,
                                        cbgm_k1=ps.CBGM_K1, cbgm_k2=ps.CBGM_K2)]
    if ps.COCO_AP and not (ps.GT_BOXES or ps.WHOLE_IMAGE):
        evaluators.append(GalleryCOCOEvaluator(dataset_name, tasks=("bbox",), distributed=True,
                                               output_dir=output_dir, use_fast_impl=False))
    return DatasetEvaluators(evaluators)
