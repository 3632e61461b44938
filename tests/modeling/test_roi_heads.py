"""I-Net / DC-I-Net ROI heads: a training step on the CPU, inference outputs, given-box embedding,
refined-box relabelling, and the buffers in checkpoints."""
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import dcinet_d2.modeling.meta_arch  # noqa: F401
import dcinet_d2.modeling.roi_heads  # noqa: F401
from dcinet_d2.testing import random_batch, tiny_cfg

ALL_LOSSES = ("OLP", "HEP", "C2HEP", "OIM", "TRIPLET", "CONTRASTIVE")


def _model(**kwargs):
    torch.manual_seed(0)
    return build_model(tiny_cfg(**kwargs))


def _train_step(model, batch):
    model.train()
    with EventStorage():
        return model(batch)


@pytest.mark.parametrize("heads", ["INetROIHeads", "DCINetROIHeads"])
def test_training_step_gives_finite_losses_of_every_kind(heads):
    model = _model(roi_heads=heads, losses=ALL_LOSSES)
    _train_step(model, random_batch(seed=1))  # fills the OLP dictionary: its negatives
    losses = _train_step(model, random_batch())
    expected = {"loss_" + n.lower() for n in ALL_LOSSES} | {"loss_cls", "loss_box_reg", "loss_rpn_cls",
                                                             "loss_rpn_loc"}
    assert set(losses) == expected
    for name, value in losses.items():
        assert torch.isfinite(value), name
    # OLP, HEP, C2HEP, OIM have a pair / a labelled sample here, so they are strictly positive.
    for name in ("loss_olp", "loss_hep", "loss_c2hep", "loss_oim"):
        assert losses[name].item() > 0, name
    sum(losses.values()).backward()
    grads = [p.grad for n, p in model.named_parameters() if "reid" in n and p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_dcinet_memories_update_during_training():
    model = _model()
    _train_step(model, random_batch())
    centers = model.roi_heads.reid_loss.c2hep_centers
    # identities 0, 1, 2 are labelled in the batch (GT boxes are always re-id samples): their centers exist.
    assert centers.initialized[:3].all() and not centers.initialized[3:].any()
    assert torch.allclose(centers.centers[:3].norm(dim=1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize("heads", ["INetROIHeads", "DCINetROIHeads"])
def test_inference_returns_normalised_embeddings(heads):
    model = _model(roi_heads=heads)
    model.eval()
    batch = random_batch(num_images=1)
    with torch.no_grad():
        out = model([{k: v for k, v in batch[0].items() if k != "instances"}])[0]["instances"]
    assert out.has("pred_boxes") and out.has("scores") and out.has("pred_classes")
    assert out.reid_embeddings.shape == (len(out), 64)
    if len(out):
        assert torch.allclose(out.reid_embeddings.norm(dim=1), torch.ones(len(out)), atol=1e-5)


def test_given_boxes_are_embedded_in_original_coordinates():
    """A box given on the original image equals the same box given on a 2x upscaled copy (the model
    resizes both to the same input), and the output keeps the boxes as given, score 1."""
    model = _model()
    model.eval()
    img = random_batch(num_images=1)[0]["image"]
    box = torch.tensor([[10.0, 12.0, 60.0, 100.0], [50.0, 20.0, 90.0, 110.0]])
    small = {"image": img, "height": 64, "width": 80, "boxes": box / 2}
    large = {"image": img, "height": 256, "width": 320, "boxes": box * 2}
    with torch.no_grad():
        a, b = (model([x])[0]["instances"] for x in (small, large))
    assert torch.allclose(a.reid_embeddings, b.reid_embeddings, atol=1e-5)
    assert torch.equal(a.pred_boxes.tensor, box / 2) and torch.equal(a.scores, torch.ones(2))
    assert not torch.allclose(a.reid_embeddings[0], a.reid_embeddings[1])


def test_refined_boxes_relabelled_against_ground_truth():
    heads = _model().roi_heads
    heads.boxes_per_image = 100
    gt = Instances((200, 200), gt_boxes=Boxes(torch.tensor([[0.0, 0, 100, 100], [100, 100, 200, 200]])),
                   gt_classes=torch.zeros(2, dtype=torch.long), gt_pids=torch.tensor([7, -1]))
    refined = torch.tensor([[0.0, 0, 100, 90],      # IoU 0.9 with person 7
                            [100, 100, 200, 150],   # IoU 0.5 with the unlabelled person
                            [0, 0, 40, 40],         # IoU 0.16: background, left out
                            [150, 0, 200, 50]])     # no overlap: background
    boxes, pids = heads.relabel_refined_boxes(refined, gt)
    assert pids.tolist() == [7, -1, 7, -1]
    assert torch.equal(boxes, torch.cat([gt.gt_boxes.tensor, refined[:2]]))
    heads.boxes_per_image, heads.add_gt_boxes = 1, False
    boxes, pids = heads.relabel_refined_boxes(refined, gt)
    assert len(boxes) == 1 and pids.item() in (7, -1)


def test_memories_survive_checkpoint(tmp_path):
    model = _model()
    _train_step(model, random_batch())
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("ckpt")
    fresh = _model()
    DetectionCheckpointer(fresh).load(str(tmp_path / "ckpt.pth"))
    for name in ("olp_dictionary", "c2hep_centers"):
        a = getattr(model.roi_heads.reid_loss, name).state_dict()
        b = getattr(fresh.roi_heads.reid_loss, name).state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    assert model.roi_heads.reid_loss.c2hep_centers.initialized.any()


def test_bad_config_names_the_key():
    cfg = tiny_cfg()
    cfg.MODEL.REID.LOSSES = ["OLP", "ARCFACE"]
    with pytest.raises(ValueError, match="MODEL.REID.LOSSES"):
        build_model(cfg)
    cfg = tiny_cfg()
    cfg.MODEL.REID.IN_FEATURES = ["res5"]
    with pytest.raises(ValueError, match="MODEL.REID.IN_FEATURES"):
        build_model(cfg)
    cfg = tiny_cfg()
    cfg.MODEL.REID.HEAD = "Transformer"
    with pytest.raises(ValueError, match="MODEL.REID.HEAD"):
        build_model(cfg)


@pytest.mark.parametrize("detach", [False, True])
def test_detach_backbone_stops_only_the_reid_gradient_at_the_backbone(detach):
    cfg = tiny_cfg()
    cfg.MODEL.REID.DETACH_BACKBONE = detach
    torch.manual_seed(0)
    model = build_model(cfg)
    _train_step(model, random_batch(seed=1))  # fills the OLP dictionary
    losses = _train_step(model, random_batch())
    (losses["loss_olp"] + losses["loss_c2hep"]).backward()
    backbone = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    reid = [p.grad for p in model.roi_heads.reid_head.parameters() if p.grad is not None]
    assert reid and any(g.abs().sum() > 0 for g in reid)
    assert (not backbone or all(g.abs().sum() == 0 for g in backbone)) == detach


@pytest.mark.parametrize("embed_from", ["proposal", "refined"])
def test_inet_embeds_each_detection_from_its_proposal(embed_from):
    """I-Net retrieves from proposals (MODEL.REID.INET_EMBED "proposal", the paper's): a detection's embedding
    is the box head's features of the proposal it was regressed from, not the refined box pooled again."""
    cfg = tiny_cfg(roi_heads="INetROIHeads", losses=("OLP", "HEP"))
    cfg.MODEL.REID.INET_EMBED = embed_from
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # a random model's detections, all kept
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    heads = model.roi_heads
    seen = {}
    inference = heads.box_predictor.inference

    def spy(predictions, proposals):
        seen["proposals"], (instances, seen["kept"]) = proposals, inference(predictions, proposals)
        return instances, seen["kept"]

    heads.box_predictor.inference = spy
    batch = random_batch(num_images=2)
    with torch.no_grad():
        outs = model([{k: v for k, v in x.items() if k != "instances"} for x in batch])
        features = model.backbone(model.preprocess_image(batch).tensor)
        for i, out in enumerate(outs):
            det = out["instances"]
            assert len(det) > 5
            source = Boxes(seen["proposals"][i].proposal_boxes.tensor[seen["kept"][i]])
            one = {"res4": features["res4"][i:i + 1]}
            from_proposal = torch.nn.functional.normalize(heads.embed_boxes(one, [source]), dim=1)
            # the inputs are not resized (128 x 160 at MIN_SIZE_TEST 128): pred_boxes are network-input boxes
            from_refined = torch.nn.functional.normalize(heads.embed_boxes(one, [det.pred_boxes]), dim=1)
            assert torch.allclose(det.reid_embeddings.norm(dim=1), torch.ones(len(det)), atol=1e-5)
            expected, other = (from_proposal, from_refined) if embed_from == "proposal" else (from_refined, from_proposal)
            torch.testing.assert_close(det.reid_embeddings, expected, atol=1e-4, rtol=1e-4)
            assert not torch.allclose(det.reid_embeddings, other, atol=1e-3)


def test_inet_detection_grad_scale_scales_only_detections_gradient_on_the_shared_head():
    """MODEL.REID.INET_DETECTION_GRAD_SCALE s: the same losses; on the shared box head, detection's gradient
    times s and re-id's unchanged; the box predictor's gradient unchanged."""
    grads = {}
    for scale in (1.0, 0.25):
        cfg = tiny_cfg(roi_heads="INetROIHeads", losses=("OLP", "HEP"))
        cfg.MODEL.REID.INET_DETECTION_GRAD_SCALE = scale
        torch.manual_seed(0)
        model = build_model(cfg)
        torch.manual_seed(1)
        _train_step(model, random_batch(seed=1))  # fills the OLP dictionary
        torch.manual_seed(2)
        losses = _train_step(model, random_batch())
        heads = model.roi_heads
        for part, names in (("det", ("loss_cls", "loss_box_reg")), ("reid", ("loss_olp", "loss_hep"))):
            model.zero_grad()
            sum(losses[n] for n in names).backward(retain_graph=True)
            grads[scale, part] = (torch.cat([p.grad.flatten() for p in heads.box_head.parameters()]),
                                  [p.grad for p in heads.box_predictor.parameters()])
        grads[scale, "losses"] = {k: v.item() for k, v in losses.items()}
    assert grads[1.0, "losses"] == pytest.approx(grads[0.25, "losses"], rel=1e-6)
    head_det_1, head_det_s = grads[1.0, "det"][0], grads[0.25, "det"][0]
    assert head_det_1.abs().sum() > 0
    torch.testing.assert_close(head_det_s, 0.25 * head_det_1)
    torch.testing.assert_close(grads[0.25, "reid"][0], grads[1.0, "reid"][0])
    for a, b in zip(grads[1.0, "det"][1], grads[0.25, "det"][1]):
        torch.testing.assert_close(a, b)


def test_inet_detection_grad_scale_out_of_range_names_the_key():
    cfg = tiny_cfg(roi_heads="INetROIHeads", losses=("OLP", "HEP"))
    cfg.MODEL.REID.INET_DETECTION_GRAD_SCALE = 1.5
    with pytest.raises(ValueError, match="MODEL.REID.INET_DETECTION_GRAD_SCALE"):
        build_model(cfg)
