"""The patched Detectron2 build: what issue 2 asks of the environment, checked for real."""
import os

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import hooks
from detectron2.engine.train_loop import SimpleTrainer
from detectron2.structures import BoxMode, Boxes, Instances


def test_model_zoo_configs_are_shipped():
    from detectron2 import model_zoo

    path = model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_C4_1x.yaml")
    assert os.path.isfile(path)
    cfg = model_zoo.get_config("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml")
    assert cfg.MODEL.RESNETS.DEPTH == 50 and "p2" in cfg.MODEL.RPN.IN_FEATURES


def test_export_imports_and_stub_explains_missing_ops():
    import detectron2.export  # noqa: F401
    from detectron2 import _C

    with pytest.raises(AttributeError, match="use_fast_impl=False"):
        _C.COCOevalMaskIouCompute  # noqa: B018
    assert "dcinet_d2" not in detectron2.export.__file__


def test_numpy2_pillow10_patches():
    from detectron2.data.transforms import ResizeTransform  # Image.LINEAR default arg

    t = ResizeTransform(4, 4, 8, 8)
    assert t.apply_image(np.zeros((4, 4, 3), np.uint8)).shape == (8, 8, 3)


def test_coco_evaluator_slow_impl_evaluates(tmp_path):
    from detectron2.evaluation import COCOEvaluator

    name = "_dcinet_test_coco_eval"
    boxes = [[10.0, 10.0, 50.0, 90.0], [60.0, 20.0, 100.0, 100.0]]
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [{
            "file_name": "x.jpg", "image_id": 1, "height": 120, "width": 120,
            "annotations": [{"bbox": b, "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0} for b in boxes]}])
        MetadataCatalog.get(name).set(thing_classes=["person"])
    ev = COCOEvaluator(name, tasks=("bbox",), distributed=False, output_dir=str(tmp_path), use_fast_impl=False)
    ev.reset()
    inst = Instances((120, 120), pred_boxes=Boxes(torch.tensor([boxes[0], [0.0, 0.0, 5.0, 5.0]])),
                     scores=torch.tensor([0.9, 0.8]), pred_classes=torch.tensor([0, 0]))
    ev.process([{"image_id": 1}], [{"instances": inst}])
    ap = ev.evaluate()["bbox"]["AP50"]
    # One of two people found, at the top of the ranking: COCO's 101-point AP50 = 50 (recall stops at 0.5).
    assert ap == pytest.approx(50.0, abs=0.6)


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, data):
        return {"loss": (self.w * data).sum()}


def test_checkpoint_resumes_torch_lr_scheduler_state(tmp_path):
    """Detectron2 0.6 skipped torch >= 2 schedulers (LRScheduler base class) on resume: patched."""
    def make():
        model = _Tiny()
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
        trainer = SimpleTrainer(model, iter([torch.ones(1)] * 100), opt)
        hook = hooks.LRScheduler(opt, sched)
        trainer.register_hooks([hook])
        ckpt = DetectionCheckpointer(model, str(tmp_path), optimizer=opt, scheduler=hook)
        return trainer, sched, ckpt

    trainer, sched, ckpt = make()
    trainer.train(0, 5)
    ckpt.save("model_0004")
    assert sched.last_epoch == 5
    _, sched2, ckpt2 = make()
    ckpt2.resume_or_load(str(tmp_path / "model_0004.pth"), resume=True)
    assert sched2.last_epoch == 5 and sched2.get_last_lr() == pytest.approx(sched.get_last_lr())


def test_add_dcinet_config_comments_every_key():
    from dcinet_d2 import add_dcinet_config
    import inspect
    import dcinet_d2.config as c

    cfg = get_cfg()
    add_dcinet_config(cfg)
    assert cfg.MODEL.REID.LOSSES == ["OLP", "C2HEP"] and cfg.MODEL.REID.OLP.DICT_SIZE == 5120
    lines = inspect.getsource(c.add_dcinet_config).splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("cfg.") and "= CN()" not in stripped:
            prev = lines[i - 1].strip()
            assert prev.startswith("#") or prev.startswith("cfg."), f"uncommented key: {stripped}"
