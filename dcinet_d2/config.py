"""Config keys added by dcinet-d2. Paper: Zhang et al., "Tasks Integrated Networks", TPAMI 2022 (docs/METHOD.md).

Every default the paper leaves open is a key here, with the value docs/METHOD.md suggests.
"""
from detectron2.config import CfgNode as CN

from .modeling.mobilenet import add_mobilenet_config
from .modeling.vgg import add_vgg_config


def add_dcinet_config(cfg):
    """Add the MODEL.REID, MODEL.VGG, TEST.PERSON_SEARCH and DATALOADER.PAIRED nodes to a Detectron2 config,
    in place."""
    # MODEL.VGG: the VGG16 backbone of the paper's VGG16 rows (keys described in modeling/vgg.py).
    add_vgg_config(cfg)
    # MODEL.MOBILENET: the ImageNet-pretrained MobileNetV2 of the CPU configs (keys in modeling/mobilenet.py).
    add_mobilenet_config(cfg)
    cfg.MODEL.REID = CN()
    # Dimension D of the L2-normalised re-id embedding (paper: unspecified; docs/METHOD.md suggests 256).
    cfg.MODEL.REID.EMBED_DIM = 256
    # Normalisation of the embedding (before L2) in training: "batch" = batch statistics (BatchNorm1d in
    # training mode); "running" = the running statistics, as at inference. A re-id batch holds two or three
    # people, whose batch statistics make a person embed differently in every batch, against memories
    # filled from other batches: with "batch", loss_c2hep rose to 25-30 on the MobileNetV2 config; but
    # "running" collapsed the from-scratch ResNet-18 demo's embeddings (mAP 9 against 29; all similarities
    # about 0.99). Measured on the synthetic data, 600 / 400 iterations, one seed each.
    cfg.MODEL.REID.EMBED_NORM = "batch"
    # Number T of labelled training identities (CUHK-SYSU 5532; PRW: its paper says 482, the
    # field's loaders 483, so the PRW configs count them); 0 = count them in DATASETS.TRAIN.
    cfg.MODEL.REID.NUM_IDENTITIES = 0
    # Re-id losses to train with, any of: OLP, HEP, C2HEP (the paper's), OIM, TRIPLET, CONTRASTIVE (baselines).
    cfg.MODEL.REID.LOSSES = ["OLP", "C2HEP"]
    # Backbone feature the re-id head pools from (DC-I-Net: "res4" under a C4 backbone, "p2".. under FPN).
    cfg.MODEL.REID.IN_FEATURES = ["res4"]
    # RoI pooling of the re-id head (DC-I-Net's separate, deeper head): output size, sampling, type.
    cfg.MODEL.REID.POOLER_RESOLUTION = 14
    cfg.MODEL.REID.POOLER_SAMPLING_RATIO = 0
    cfg.MODEL.REID.POOLER_TYPE = "ROIAlignV2"
    # Re-id head of DC-I-Net: "Res5" (its own res5 stage + pooling + embedding), "MobileNetV2" (its own copy of
    # MobileNetV2's stride-32 blocks) or "Conv" (small conv stack).
    cfg.MODEL.REID.HEAD = "Res5"
    # "Conv" head only: number of 3x3 convolutions and their channels.
    cfg.MODEL.REID.CONV_LAYERS = 2
    cfg.MODEL.REID.CONV_DIM = 256
    # Normalisation inside the re-id head ("BN", "GN", "FrozenBN", ""), as MODEL.RESNETS.NORM.
    cfg.MODEL.REID.NORM = "BN"
    # I-Net at inference: "proposal" = each detection's embedding is that of the RoI features of the proposal
    # it was regressed from (the box head's features, already computed: the paper's I-Net retrieves from
    # proposals, the weakness DC-I-Net removes); "refined" = the refined box pooled again through the box
    # head (the earlier behaviour, which hands I-Net part of DC-I-Net's gain). Given boxes (queries) are
    # embedded from the box as given either way.
    cfg.MODEL.REID.INET_EMBED = "proposal"
    # I-Net in training: detection's gradient on the box head it shares with re-id (and through it on the
    # backbone) is multiplied by this. 1 = the paper (both loss weights 1, each task's full gradient). Configs
    # that scale every re-id loss weight down from the paper's 1 (the pretrained CPU configs: 0.003) set it to
    # the same factor, so the shared layers keep the paper's balance of the two tasks at the re-id step size
    # those configs need; detection's own layers (box predictor, RPN) keep its full gradient (docs/METHOD.md,
    # "I-Net's shared box head").
    cfg.MODEL.REID.INET_DETECTION_GRAD_SCALE = 1.0
    # DC-I-Net: a refined box takes the identity of the ground truth it overlaps with IoU >= this
    # (unlabelled person: -1); below it the box is background and gets no re-id loss.
    cfg.MODEL.REID.IOU_THRESHOLD = 0.5
    # DC-I-Net: at most this many refined boxes per image enter the re-id head during training.
    cfg.MODEL.REID.BOXES_PER_IMAGE = 64
    # DC-I-Net: ground-truth boxes are added to the refined boxes during training (as proposals are).
    cfg.MODEL.REID.ADD_GT_BOXES = True
    # DC-I-Net: stop the re-id gradient at the backbone features (not in the paper, whose backbones are
    # ImageNet-pretrained). From-scratch CPU models need it: measured on the synthetic data, the re-id losses
    # (against memories that lag the fast-changing features) drag detection AP from 80 to 8-51.
    cfg.MODEL.REID.DETACH_BACKBONE = False

    # OLP loss (on-line pairing with a FIFO feature dictionary). Total loss: L_det + alpha*OLP + beta*(C2)HEP.
    cfg.MODEL.REID.OLP = CN()
    # alpha, the OLP loss weight (paper: 1).
    cfg.MODEL.REID.OLP.WEIGHT = 1.0
    # Dictionary size K (paper's ablation: 20x128, 40x128, 60x128; best 40x128 = 5120).
    cfg.MODEL.REID.OLP.DICT_SIZE = 5120
    # Similarity scale s: logits s*cos (not in the paper's formula, where s = 1; s = 1 learns slowly).
    cfg.MODEL.REID.OLP.SCALE = 10.0
    # The positive of a pair is a fixed target (no gradient), as in the seed, whose gradient is dL/dx_a only;
    # both members of a pair still serve as anchor in turn. False: the positive is differentiated too.
    cfg.MODEL.REID.OLP.DETACH_POSITIVE = True
    # Unlabelled people's features are pushed into the dictionary as negatives (paper: yes).
    cfg.MODEL.REID.OLP.PUSH_UNLABELED = True
    # The batch's own other people (other identities and unlabelled, detached) join the dictionary as
    # negatives. The dictionary alone holds features of earlier steps only, so a model whose features all move
    # together between steps separates the current pair from every negative without telling people apart
    # (docs/METHOD.md, "I-Net's shared box head"); negatives from the same step close that shortcut.
    cfg.MODEL.REID.OLP.BATCH_NEGATIVES = False

    # HEP loss (hard example priority softmax over a pool of classes), I-Net's classification loss.
    cfg.MODEL.REID.HEP = CN()
    # beta, the HEP loss weight (paper: 1).
    cfg.MODEL.REID.HEP.WEIGHT = 1.0
    # Priority pool size |P| (paper's ablation: 50, 100, 1000, all; best 100).
    cfg.MODEL.REID.HEP.POOL_SIZE = 100
    # Hard negative classes per sample in the pool (ranks taken round robin across the batch's samples), then
    # random classes fill it (the seed: "if the pool is not yet filled, pick classes at random"). 5 leaves
    # the random fill room on CUHK-SYSU / PRW batches (about 2-10 labelled boxes, pool 100); 0 = no limit
    # (hard classes then fill the whole pool and the random fill never runs).
    cfg.MODEL.REID.HEP.HARD_PER_SAMPLE = 5
    # HEP's logits: "linear" = classifier scores W x + b (the seed) on the embedding before L2 normalisation
    # (BatchNorm output, norm about sqrt(D)); "linear_unit" = the same on the L2-normalised embedding (the
    # earlier default: no score can exceed |w| + |b|, about 0.11 at the start, so HEP sat at its uniform
    # value: ln 16 = 2.77 at 400 iterations on the MobileNetV2 CPU configs, also with a 333x classifier rate;
    # tests/modeling/test_reid_loss.py shows it on fixed features); "cosine" = SCALE * cos(x, W) (a cosine
    # classifier, close to C2HEP). Hardness is ranked by the cosine to W's rows either way.
    cfg.MODEL.REID.HEP.LOGITS = "linear"
    # Logit scale of the "cosine" logits (paper: unspecified).
    cfg.MODEL.REID.HEP.SCALE = 10.0

    # C2HEP loss (class-center guided HEP), DC-I-Net's classification loss.
    cfg.MODEL.REID.C2HEP = CN()
    # beta, the C2HEP loss weight (paper: 1).
    cfg.MODEL.REID.C2HEP.WEIGHT = 1.0
    # Priority pool size |P| over class centers (paper: 100).
    cfg.MODEL.REID.C2HEP.POOL_SIZE = 100
    # Hard negative classes per sample in the pool, ranked by cosine to the centers; 0 = no limit (as HEP).
    cfg.MODEL.REID.C2HEP.HARD_PER_SAMPLE = 5
    # lambda, the scale of the cosine similarity to centers (paper: unspecified; suggested 30).
    cfg.MODEL.REID.C2HEP.LAMBDA = 30.0
    # phi, the center momentum c <- phi*c + (1-phi)*x (paper: unspecified; suggested 0.5).
    cfg.MODEL.REID.C2HEP.MOMENTUM = 0.5
    # Re-normalise a center to unit length after each update (suggested: yes).
    cfg.MODEL.REID.C2HEP.RENORM = True
    # Center update: "batch_mean" = one vectorised update per step, each class moved by the mean of its features
    # in the step (the seed's rule exactly for one feature per class); "sequential" = one feature at a time.
    cfg.MODEL.REID.C2HEP.UPDATE = "batch_mean"

    # OIM baseline (Xiao et al. 2017): labelled lookup table + circular queue of unlabelled features.
    cfg.MODEL.REID.OIM = CN()
    cfg.MODEL.REID.OIM.WEIGHT = 1.0
    # Lookup-table momentum (OIM: 0.5).
    cfg.MODEL.REID.OIM.MOMENTUM = 0.5
    # Circular queue size for unlabelled identities (OIM: 5000).
    cfg.MODEL.REID.OIM.QUEUE_SIZE = 5000
    # Logit scale, 1/temperature (OIM: 30).
    cfg.MODEL.REID.OIM.SCALE = 30.0

    # Batch-hard triplet baseline (paper's "Triplet+HEP" row).
    cfg.MODEL.REID.TRIPLET = CN()
    cfg.MODEL.REID.TRIPLET.WEIGHT = 1.0
    # Margin on cosine distance.
    cfg.MODEL.REID.TRIPLET.MARGIN = 0.3

    # Contrastive (pairwise) baseline of the input-number study.
    cfg.MODEL.REID.CONTRASTIVE = CN()
    cfg.MODEL.REID.CONTRASTIVE.WEIGHT = 1.0
    # Negative pairs are pushed below this cosine similarity.
    cfg.MODEL.REID.CONTRASTIVE.MARGIN = 0.5

    # Training batches of images that share labelled identities ("on-line pairing"); SOLVER.IMS_PER_BATCH
    # images a step in all (paper: 2; the input-number study: 4 and 8).
    cfg.DATALOADER.PAIRED = CN()
    # Use the paired-identity sampler for training (False: Detectron2's DATALOADER.SAMPLER_TRAIN).
    cfg.DATALOADER.PAIRED.ENABLED = True
    # Images per group sharing one labelled identity; groups fill each per-GPU batch.
    cfg.DATALOADER.PAIRED.GROUP_SIZE = 2

    # Learning rate of the backbone's parameters relative to SOLVER.BASE_LR (1.0: Detectron2's optimizer).
    cfg.SOLVER.BACKBONE_LR_FACTOR = 1.0
    # Learning rate of the ROI box head's parameters (MODEL.ROI_BOX_HEAD: the pretrained stage run per RoI,
    # whose features I-Net's re-id shares with detection) relative to SOLVER.BASE_LR. 1.0: Detectron2's.
    cfg.SOLVER.BOX_HEAD_LR_FACTOR = 1.0
    # Learning rate of the re-id embedding projections (the Linear before the normalisation) relative to
    # SOLVER.BASE_LR. The embedding is L2-normalised, so its function ignores the weight's scale while a step
    # moves it by lr / |w|^2 in direction: at std-0.01 initial weights and lr 0.01 the features drift faster
    # than the OLP dictionary and the C2HEP centers can follow (memory losses above uniform); see
    # configs/cpu/Base-CPU-MobileNetV2.yaml for the measurements. 1.0: every parameter alike (the paper).
    cfg.SOLVER.EMBED_LR_FACTOR = 1.0
    # Learning rate of the re-id losses' learnt classifiers (HEP's W and b) relative to SOLVER.BASE_LR. A loss
    # weight w scales the classifier's gradient with the rest; 1 / w gives it the SGD step it takes at weight 1
    # (the paper's) while the network keeps its small step. Measured on the MobileNetV2 CPU configs (w = 0.003,
    # 400 iterations): 333 did not make HEP learn (BENCHMARKS, the pretrained study's *_clf rows). 1.0: every
    # parameter alike.
    cfg.SOLVER.CLASSIFIER_LR_FACTOR = 1.0

    cfg.TEST.PERSON_SEARCH = CN()
    # Detections with score below this are dropped before search and detection metrics (field: 0.5).
    cfg.TEST.PERSON_SEARCH.DET_THRESH = 0.5
    # CUHK-SYSU gallery sizes to report (50, 100, 500, 1000, 2000, 4000; -1 = full set). The first is
    # the headline number.
    cfg.TEST.PERSON_SEARCH.GALLERY_SIZES = [100]
    # Embed the annotated gallery boxes instead of detections (score 1): the paper's "GT" rows.
    cfg.TEST.PERSON_SEARCH.GT_BOXES = False
    # Generic galleries only: embed whole images, no detection (the paper's WebTattoo "without detection").
    cfg.TEST.PERSON_SEARCH.WHOLE_IMAGE = False
    # Write the results file (search_results.pth) and plots under OUTPUT_DIR/inference/<dataset>.
    cfg.TEST.PERSON_SEARCH.SAVE_RESULTS = True
    # Also run Detectron2's COCOEvaluator on the gallery (COCO-style detection AP).
    cfg.TEST.PERSON_SEARCH.COCO_AP = True
    # Also report the search re-scored with SeqNet's context bipartite graph matching (evaluation/cbgm.py):
    # the query's companions, matched to each top gallery image's people, re-score the query's match there.
    # Reported beside the plain numbers as mAP@cbgm, top1@cbgm, ... (same results file, same detections).
    cfg.TEST.PERSON_SEARCH.CBGM = False
    # CBGM's k1: the images of the query's k1 most similar detections are re-scored; 0 = SeqNet's value for
    # the dataset (CUHK-SYSU 10, PRW and generic galleries 30).
    cfg.TEST.PERSON_SEARCH.CBGM_K1 = 0
    # CBGM's k2: people of the query image per graph, the query included (k2 - 1 most confident companions);
    # 0 = SeqNet's value (CUHK-SYSU 3, PRW and generic galleries 4).
    cfg.TEST.PERSON_SEARCH.CBGM_K2 = 0
