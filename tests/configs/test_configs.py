"""Every YAML under configs/ merges into the project's config, is consistent, and is the row it claims."""
import pathlib
import pickle
import re

import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, build_model, build_resnet_backbone
from detectron2.modeling.roi_heads import ROI_BOX_HEAD_REGISTRY, ROI_HEADS_REGISTRY

import dcinet_d2.modeling.meta_arch  # noqa: F401  (registers PersonSearchRCNN)
import dcinet_d2.modeling.reid_head  # noqa: F401  (registers Res5BoxHead)
import dcinet_d2.modeling.roi_heads  # noqa: F401  (registers INetROIHeads, DCINetROIHeads)
from dcinet_d2.config import add_dcinet_config
from dcinet_d2.modeling.vgg import add_vgg_config, convert_torchvision_vgg16

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
# Detectron2 configs (configs/studies/ holds study files of scripts/run_study.py).
ALL = sorted(p for p in CONFIGS.rglob("*.yaml") if "studies" not in p.relative_to(CONFIGS).parts)
LEAVES = [p for p in ALL if not p.name.startswith("Base-")]
ABLATIONS = CONFIGS / "cuhk_sysu" / "ablations"


def _rel(path):
    return str(path.relative_to(ROOT))


def load(path) -> CfgNode:
    cfg = get_cfg()
    add_dcinet_config(cfg)
    add_vgg_config(cfg)
    cfg.merge_from_file(str(path))  # raises KeyError on any key the project does not define
    return cfg


def _flatten(node, prefix=""):
    out = {}
    for key, value in node.items():
        if isinstance(value, CfgNode):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, (list, tuple)) else value
    return out


def diff(path, base_path):
    """{key: value in ``path``} for the keys where ``path``'s merged config differs from its base's."""
    a, b = _flatten(load(path)), _flatten(load(base_path))
    return {k: v for k, v in a.items() if b[k] != v}


def _base_of(path):
    match = re.search(r'^_BASE_:\s*"([^"]+)"', path.read_text(), re.M)
    return (path.parent / match.group(1)).resolve()


def test_the_tree_is_there():
    names = {_rel(p) for p in LEAVES}
    for want in ("configs/cuhk_sysu/inet_vgg16.yaml", "configs/cuhk_sysu/dcinet_vgg16.yaml",
                 "configs/cuhk_sysu/dcinet_r50.yaml", "configs/prw/inet_vgg16.yaml",
                 "configs/prw/dcinet_vgg16.yaml", "configs/prw/dcinet_r50.yaml",
                 "configs/webtattoo/dcinet_vgg16.yaml", "configs/webtattoo/dcinet_vgg16_no_det.yaml",
                 "configs/cpu/dcinet_r18_synth.yaml", "configs/cpu/inet_r18_synth.yaml"):
        assert want in names
    assert len(list(ABLATIONS.glob("*.yaml"))) == 25


@pytest.mark.parametrize("path", ALL, ids=_rel)
def test_merges_with_known_keys_only(path):
    cfg = load(path)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1


@pytest.mark.parametrize("path", LEAVES, ids=_rel)
def test_names_are_registered_and_features_exist(path):
    cfg = load(path)
    assert cfg.MODEL.META_ARCHITECTURE in META_ARCH_REGISTRY
    assert cfg.MODEL.BACKBONE.NAME in BACKBONE_REGISTRY
    assert cfg.MODEL.ROI_HEADS.NAME in ROI_HEADS_REGISTRY
    assert cfg.MODEL.ROI_BOX_HEAD.NAME in ROI_BOX_HEAD_REGISTRY
    vgg = cfg.MODEL.BACKBONE.NAME == "build_vgg16_backbone"
    mobilenet = cfg.MODEL.BACKBONE.NAME == "build_mobilenetv2_backbone"
    outputs = set(cfg.MODEL.VGG.OUT_FEATURES if vgg else cfg.MODEL.MOBILENET.OUT_FEATURES if mobilenet
                  else cfg.MODEL.RESNETS.OUT_FEATURES)
    for key in ("RPN", "ROI_HEADS", "REID"):
        assert set(cfg.MODEL[key].IN_FEATURES) <= outputs, f"MODEL.{key}.IN_FEATURES of {_rel(path)}"
    # ImageNet VGG16 (torchvision) takes RGB normalised by ImageNet std; MSRA R-50 takes BGR, std 1.
    if vgg:
        assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.PIXEL_STD == [58.395, 57.120, 57.375]
        assert cfg.MODEL.ROI_BOX_HEAD.FC_DIM == 4096 and cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION == 7
    assert cfg.DATALOADER.ASPECT_RATIO_GROUPING is False
    assert cfg.SOLVER.IMS_PER_BATCH % cfg.DATALOADER.PAIRED.GROUP_SIZE == 0


@pytest.mark.parametrize("path", [p for p in LEAVES if "cpu" not in p.parts], ids=_rel)
def test_gpu_recipes_use_the_papers_solver_and_imagenet_weights(path):
    cfg = load(path)
    assert (cfg.SOLVER.BASE_LR, tuple(cfg.SOLVER.STEPS), cfg.SOLVER.MAX_ITER) == (0.001, (40000,), 70000)
    images = re.match(r"inputs_(\d)_", path.name)
    assert cfg.SOLVER.IMS_PER_BATCH == (int(images.group(1)) if images else 2)
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (900, 1500)
    assert cfg.MODEL.WEIGHTS in ("detectron2://ImageNetPretrained/MSRA/R-50.pkl",
                                 "pretrained/vgg16_torchvision_d2.pkl")
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 2


# The main rows: (config, ROI heads, losses, backbone, training set, identities).
MAIN_ROWS = [
    ("cuhk_sysu/inet_vgg16.yaml", "INetROIHeads", ["OLP", "HEP"], "build_vgg16_backbone", "cuhk_sysu_train", 5532),
    ("cuhk_sysu/dcinet_vgg16.yaml", "DCINetROIHeads", ["OLP", "C2HEP"], "build_vgg16_backbone", "cuhk_sysu_train",
     5532),
    ("cuhk_sysu/dcinet_r50.yaml", "DCINetROIHeads", ["OLP", "C2HEP"], "build_resnet_backbone", "cuhk_sysu_train",
     5532),
    ("prw/inet_vgg16.yaml", "INetROIHeads", ["OLP", "HEP"], "build_vgg16_backbone", "prw_train", 0),
    ("prw/dcinet_vgg16.yaml", "DCINetROIHeads", ["OLP", "C2HEP"], "build_vgg16_backbone", "prw_train", 0),
    ("prw/dcinet_r50.yaml", "DCINetROIHeads", ["OLP", "C2HEP"], "build_resnet_backbone", "prw_train", 0),
    ("webtattoo/dcinet_vgg16.yaml", "DCINetROIHeads", ["OLP", "C2HEP"], "build_vgg16_backbone",
     "webtattoo_train", 0),
    ("webtattoo/inet_vgg16.yaml", "INetROIHeads", ["OLP", "HEP"], "build_vgg16_backbone", "webtattoo_train", 0),
    ("cpu/dcinet_r18_synth.yaml", "DCINetROIHeads", ["OLP", "C2HEP"], "build_resnet_backbone",
     "synth_cuhk_sysu_train", 0),
    ("cpu/inet_r18_synth.yaml", "INetROIHeads", ["OLP", "HEP"], "build_resnet_backbone", "synth_cuhk_sysu_train", 0),
    ("cpu/dcinet_r18_synth_prw.yaml", "DCINetROIHeads", ["OLP", "C2HEP"], "build_resnet_backbone",
     "synth_prw_train", 0),
    ("cpu/inet_r18_synth_prw.yaml", "INetROIHeads", ["OLP", "HEP"], "build_resnet_backbone", "synth_prw_train", 0),
]


@pytest.mark.parametrize("row", MAIN_ROWS, ids=lambda r: r[0])
def test_main_rows(row):
    name, heads, losses, backbone, train, identities = row
    cfg = load(CONFIGS / name)
    assert cfg.MODEL.ROI_HEADS.NAME == heads and cfg.MODEL.REID.LOSSES == losses
    assert cfg.MODEL.BACKBONE.NAME == backbone
    assert cfg.DATASETS.TRAIN == (train,) and cfg.DATASETS.TEST == (train.replace("_train", "_gallery"),)
    assert cfg.MODEL.REID.NUM_IDENTITIES == identities
    if backbone == "build_resnet_backbone" and "cpu" not in name:
        assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.MODEL.REID.HEAD == "Res5"
        assert cfg.MODEL.ROI_BOX_HEAD.NAME == "Res5BoxHead"


@pytest.mark.parametrize("path", sorted((CONFIGS / "cpu").glob("*_mnv2_synth*.yaml")), ids=_rel)
def test_cpu_pretrained_configs_follow_the_papers_regime(path):
    cfg = load(path)
    assert cfg.MODEL.DEVICE == "cpu" and cfg.MODEL.WEIGHTS == "dcinet://ImageNetPretrained/MobileNetV2"
    assert cfg.MODEL.MOBILENET.NORM == "FrozenBN" and cfg.MODEL.BACKBONE.FREEZE_AT >= 1
    assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.PIXEL_STD == [58.395, 57.12, 57.375]
    assert cfg.MODEL.REID.DETACH_BACKBONE is False  # re-id trains through the backbone, as in the paper
    # alpha = beta, and every baseline at the same weight, so that the study compares losses at one step size
    # (0.003: the measured departure from the paper's 1, in Base-CPU-MobileNetV2.yaml).
    weights = {cfg.MODEL.REID[n].WEIGHT for n in ("OLP", "HEP", "C2HEP", "OIM", "TRIPLET", "CONTRASTIVE")}
    assert weights == {0.003}
    assert cfg.MODEL.ROI_BOX_HEAD.NAME == "MobileNetV2BoxHead"
    if cfg.MODEL.ROI_HEADS.NAME == "DCINetROIHeads":
        assert cfg.MODEL.REID.HEAD == "MobileNetV2" and cfg.MODEL.REID.LOSSES == ["OLP", "C2HEP"]
    assert cfg.SOLVER.MAX_ITER <= 1000 and cfg.INPUT.MAX_SIZE_TRAIN <= 400


@pytest.mark.parametrize("path", sorted((CONFIGS / "cpu").glob("*_r18_synth*.yaml")), ids=_rel)
def test_cpu_configs_train_from_scratch_small(path):
    cfg = load(path)
    assert cfg.MODEL.DEVICE == "cpu" and cfg.MODEL.WEIGHTS == ""
    assert cfg.MODEL.RESNETS.NORM == "BN" and cfg.MODEL.BACKBONE.FREEZE_AT == 0
    assert (cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS) == (18, 64)
    assert cfg.MODEL.REID.HEAD == "Conv" and cfg.MODEL.ROI_BOX_HEAD.NAME == "FastRCNNConvFCHead"
    assert cfg.SOLVER.MAX_ITER <= 1000 and cfg.INPUT.MAX_SIZE_TRAIN <= 400


# What each ablation changes relative to the file it builds on (docs/METHOD.md, "Ablations").
LOSSES = "MODEL.REID.LOSSES"
DICT = "MODEL.REID.OLP.DICT_SIZE"
POOL = "MODEL.REID.C2HEP.POOL_SIZE"
BATCH = "SOLVER.IMS_PER_BATCH"
CURVE = {"TEST.EVAL_PERIOD": 5000, "TEST.PERSON_SEARCH.GALLERY_SIZES": [100]}
ABLATION_DIFFS = {
    "loss_triplet_hep": ("dcinet_vgg16", {LOSSES: ["TRIPLET", "HEP"]}),
    "loss_olp": ("dcinet_vgg16", {LOSSES: ["OLP"]}),
    "loss_c2hep": ("dcinet_vgg16", {LOSSES: ["C2HEP"]}),
    "loss_olp_hep": ("dcinet_vgg16", {LOSSES: ["OLP", "HEP"]}),
    "loss_olp_c2hep": ("dcinet_vgg16", {}),
    "inet_c2hep": ("inet_vgg16", {LOSSES: ["OLP", "C2HEP"]}),
    "dcinet_hep": ("dcinet_vgg16", {LOSSES: ["OLP", "HEP"]}),
    "dict_20x128": ("dcinet_vgg16", {DICT: 2560}),
    "dict_40x128": ("dcinet_vgg16", {}),
    "dict_60x128": ("dcinet_vgg16", {DICT: 7680}),
    "dict_20x128_olp": ("dcinet_vgg16", {LOSSES: ["OLP"], DICT: 2560}),
    "dict_40x128_olp": ("dcinet_vgg16", {LOSSES: ["OLP"]}),
    "dict_60x128_olp": ("dcinet_vgg16", {LOSSES: ["OLP"], DICT: 7680}),
    "pool_50": ("dcinet_vgg16", {POOL: 50}),
    "pool_100": ("dcinet_vgg16", {}),
    "pool_1000": ("dcinet_vgg16", {POOL: 1000}),
    "pool_5532": ("dcinet_vgg16", {POOL: 5532}),
    "inputs_2_olp_c2hep_r50": ("dcinet_r50", {}),
    "inputs_4_olp_c2hep_r50": ("dcinet_r50", {BATCH: 4}),
    "inputs_8_olp_c2hep_r50": ("dcinet_r50", {BATCH: 8}),
    "inputs_2_contrastive_r50": ("dcinet_r50", {LOSSES: ["CONTRASTIVE"]}),
    "inputs_4_contrastive_r50": ("dcinet_r50", {LOSSES: ["CONTRASTIVE"], BATCH: 4}),
    "inputs_8_contrastive_r50": ("dcinet_r50", {LOSSES: ["CONTRASTIVE"], BATCH: 8}),
    "curve_inet_vgg16": ("inet_vgg16", CURVE),
    "curve_dcinet_vgg16": ("dcinet_vgg16", CURVE),
}


def test_every_ablation_file_is_listed():
    assert {p.stem for p in ABLATIONS.glob("*.yaml")} == set(ABLATION_DIFFS)


@pytest.mark.parametrize("name", sorted(ABLATION_DIFFS))
def test_ablation_changes_only_its_keys(name):
    base, expected = ABLATION_DIFFS[name]
    path = ABLATIONS / f"{name}.yaml"
    assert _base_of(path) == (CONFIGS / "cuhk_sysu" / f"{base}.yaml").resolve()
    assert diff(path, _base_of(path)) == expected


def test_webtattoo_without_detection_only_embeds_whole_images():
    path = CONFIGS / "webtattoo" / "dcinet_vgg16_no_det.yaml"
    assert diff(path, _base_of(path)) == {"TEST.PERSON_SEARCH.WHOLE_IMAGE": True}


def test_readme_names_every_experiment_and_only_existing_files():
    text = (CONFIGS / "README.md").read_text()
    mentioned = set(re.findall(r"configs/[\w/.-]+\.yaml", text))
    assert {_rel(p) for p in LEAVES} <= mentioned
    missing = [m for m in mentioned if not (ROOT / m).is_file()]
    assert missing == []


def _caffe2_resnet50_blobs():
    """ImageNet-style weights named as Detectron2's MSRA R-50.pkl (Caffe2 blob names, numpy arrays),
    built from Detectron2's own ResNet-50 so that every shape is right."""
    cfg = get_cfg()
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    state = build_resnet_backbone(cfg, ShapeSpec(channels=3)).state_dict()
    branch = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "shortcut": "branch1"}
    blobs = {}
    for key, value in state.items():
        if "running_" in key:  # FrozenBN buffers: the Caffe2 file folds BN into scale and bias
            continue
        parts = key.split(".")
        if parts[0] == "stem":
            name = "conv1_w" if parts[-2] == "conv1" else f"res_conv1_bn_{'s' if parts[-1] == 'weight' else 'b'}"
        else:
            stem = f"{parts[0]}_{parts[1]}_{branch[parts[2]]}"
            name = f"{stem}_w" if len(parts) == 4 else f"{stem}_bn_{'s' if parts[-1] == 'weight' else 'b'}"
        blobs[name] = torch.randn_like(value).numpy()
    return blobs


@pytest.mark.slow
def test_dcinet_r50_loads_imagenet_res5_into_both_heads(tmp_path):
    blobs = _caffe2_resnet50_blobs()
    with open(tmp_path / "R-50.pkl", "wb") as f:
        pickle.dump(blobs, f)
    cfg = load(CONFIGS / "cuhk_sysu" / "dcinet_r50.yaml")
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    DetectionCheckpointer(model).load(str(tmp_path / "R-50.pkl"))
    sd = model.state_dict()
    want = torch.from_numpy(blobs["res5_0_branch2a_w"])
    assert torch.equal(sd["roi_heads.box_head.res5.0.conv1.weight"], want)
    assert torch.equal(sd["roi_heads.reid_head.reid_res5.0.conv1.weight"], want)
    # And computes what the box head's res5 computes, in training mode too: the MSRA file holds folded BN
    # (scale and shift only), which a trainable BN would replace by batch statistics.
    model.train()
    x = torch.randn(4, 1024, 14, 14, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.roi_heads.reid_head.reid_res5(x), model.roi_heads.box_head.res5(x))
    # A full checkpoint of the model itself restores its own (now different) re-id head.
    with torch.no_grad():
        model.roi_heads.reid_head.reid_res5[0].conv1.weight.add_(1.0)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("full")
    fresh = build_model(cfg)
    DetectionCheckpointer(fresh).load(str(tmp_path / "full.pth"))
    assert torch.equal(fresh.state_dict()["roi_heads.reid_head.reid_res5.0.conv1.weight"], want + 1.0)
    assert torch.equal(sd["backbone.res4.5.conv3.weight"], torch.from_numpy(blobs["res4_5_branch2c_w"]))


@pytest.mark.slow
def test_vgg16_configs_load_converted_torchvision_weights(tmp_path):
    """The whole DC-I-Net VGG16 model (real config) takes every backbone and fc6/fc7 weight of a
    torchvision VGG16 converted by ``convert_torchvision_vgg16``."""
    torch.manual_seed(0)
    tv = torchvision.models.vgg16().state_dict()
    converted = convert_torchvision_vgg16(tv)
    with open(tmp_path / "vgg16.pkl", "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in converted.items()}, "__author__": "test"}, f)
    cfg = load(CONFIGS / "cuhk_sysu" / "dcinet_vgg16.yaml")
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    DetectionCheckpointer(model).load(str(tmp_path / "vgg16.pkl"))
    sd = model.state_dict()
    for key, value in converted.items():
        assert torch.equal(sd[key], value), key
    assert torch.equal(sd["backbone.conv5_3.weight"], tv["features.28.weight"])
    assert torch.equal(sd["roi_heads.box_head.fc1.weight"], tv["classifier.0.weight"])
    # DC-I-Net's re-id head is the pretrained conv5 block: from conv4_3 it computes the backbone's conv5_3.
    for name in ("conv5_1", "conv5_2", "conv5_3"):
        assert torch.equal(sd[f"roi_heads.reid_head.reid_conv5.{name}.weight"], sd[f"backbone.{name}.weight"])
    x = torch.rand(2, 512, 14, 14)
    with torch.no_grad():
        want = x
        for name in ("conv5_1", "conv5_2", "conv5_3"):
            want = getattr(model.backbone, name)(torch.nn.functional.max_pool2d(want, 2) if name == "conv5_1" else want)
        got = model.roi_heads.reid_head.reid_conv5(torch.nn.functional.max_pool2d(x, 2))
    torch.testing.assert_close(got, want)
