"""Small models and inputs for tests and benchmarks (CPU, seconds)."""
import torch
from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances

from .config import add_dcinet_config


def tiny_cfg(roi_heads="DCINetROIHeads", num_identities=10, losses=("OLP", "C2HEP")):
    """A ResNet-18 C4-style PersonSearchRCNN config: res4 features, small fc box head, conv re-id head."""
    cfg = get_cfg()
    add_dcinet_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.META_ARCHITECTURE = "PersonSearchRCNN"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RPN.IN_FEATURES = ["res4"]
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 300
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 100
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32, 64, 128]]
    cfg.MODEL.ROI_HEADS.NAME = roi_heads
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 256
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.MODEL.REID.IN_FEATURES = ["res4"]
    cfg.MODEL.REID.HEAD = "Conv"
    cfg.MODEL.REID.CONV_DIM = 128
    cfg.MODEL.REID.POOLER_RESOLUTION = 8
    cfg.MODEL.REID.EMBED_DIM = 64
    cfg.MODEL.REID.NUM_IDENTITIES = num_identities
    cfg.MODEL.REID.LOSSES = list(losses)
    cfg.MODEL.REID.OLP.DICT_SIZE = 256
    cfg.MODEL.REID.HEP.POOL_SIZE = 8
    cfg.MODEL.REID.C2HEP.POOL_SIZE = 8
    cfg.MODEL.REID.OIM.QUEUE_SIZE = 64
    cfg.INPUT.MIN_SIZE_TEST = 128
    cfg.INPUT.MAX_SIZE_TEST = 256
    return cfg


def random_batch(num_images=2, size=(128, 160), pids=((0, 1, -1), (0, 2)), seed=0):
    """Mapped training inputs: random images with boxes; image i holds persons ``pids[i]`` (-1 unlabelled)."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    batch = []
    for i in range(num_images):
        ids = torch.tensor(pids[i % len(pids)], dtype=torch.long)
        n = len(ids)
        x1 = torch.rand(n, generator=g) * (w - 50)
        y1 = torch.rand(n, generator=g) * (h - 90)
        boxes = torch.stack([x1, y1, x1 + 30 + 15 * torch.rand(n, generator=g),
                             y1 + 60 + 25 * torch.rand(n, generator=g)], dim=1)
        inst = Instances((h, w), gt_boxes=Boxes(boxes), gt_classes=torch.zeros(n, dtype=torch.long), gt_pids=ids)
        image = (torch.rand(3, h, w, generator=g) * 255).to(torch.uint8)
        batch.append({"image": image, "height": h, "width": w, "instances": inst})
    return batch


def save_tiny_model(folder, seed=0):
    """Write a randomly initialised :func:`tiny_cfg` model as a config file and a checkpoint, as training
    leaves them (``config.yaml``, ``model_final.pth``); returns (config path, weights path)."""
    import os

    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    cfg = tiny_cfg()
    torch.manual_seed(seed)
    model = build_model(cfg)
    os.makedirs(folder, exist_ok=True)
    DetectionCheckpointer(model, save_dir=str(folder)).save("model_final")
    config = os.path.join(folder, "config.yaml")
    with open(config, "w") as f:
        f.write(cfg.dump())
    return config, os.path.join(folder, "model_final.pth")


def train_steps_checking_memories(steps, out_file):
    """Distributed worker (run it under Detectron2's ``launch`` with several processes): train a tiny
    DC-I-Net (DDP) for ``steps`` steps on different random data per rank, and after every step check that
    the re-id memories (OLP dictionary, class centers and their "seen" flags) and the parameters are
    identical on every rank. The main process writes the number of checked steps to ``out_file``."""
    from detectron2.engine.defaults import create_ddp_model
    from detectron2.modeling import build_model
    from detectron2.utils import comm
    from detectron2.utils.events import EventStorage

    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    ddp = create_ddp_model(model, broadcast_buffers=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    checked = 0
    with EventStorage():
        for step in range(steps):
            losses = ddp(random_batch(2, seed=1000 * comm.get_rank() + step))  # other data on each rank
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            # Parameters (DDP averages gradients) and the re-id memories; BatchNorm statistics stay per
            # process (Detectron2's DDP: broadcast_buffers=False).
            state = {k: v.detach().clone() for k, v in model.named_parameters()}
            state.update({k: v.clone() for k, v in model.roi_heads.reid_loss.state_dict().items()})
            everyone = comm.all_gather(state)
            for k in state:
                for other in everyone[1:]:
                    if not torch.equal(everyone[0][k], other[k]):
                        raise AssertionError(f"step {step}: {k} differs between ranks")
            assert int(model.roi_heads.reid_loss.olp_dictionary.num_filled) > 0
            checked += 1
    if comm.is_main_process():
        with open(out_file, "w") as f:
            f.write(str(checked))
