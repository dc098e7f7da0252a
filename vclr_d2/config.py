"""Config keys of vclr_d2.

``add_vclr_config(cfg)`` creates every node this project reads and changes no existing value
except where stated. Symbols in comments refer to the v-CLR paper (arXiv 2504.01383).
Call order in a training script: ``get_cfg`` -> ``add_vclr_config`` -> ``merge_from_file`` ->
``merge_from_list`` -> ``freeze``.
"""

from detectron2.config import CfgNode as CN

from vclr_d2.data.views.layout import DEPTH, STYLE

__all__ = ["add_vclr_config"]


def add_vclr_config(cfg: CN) -> None:
    """Add the v-CLR keys to a detectron2 config, in place."""
    _add_backbone_config(cfg)
    _add_head_config(cfg)
    _add_vclr_model_config(cfg)
    _add_input_config(cfg)
    _add_dataset_config(cfg)
    _add_solver_config(cfg)
    _add_test_config(cfg)


def _add_backbone_config(cfg: CN) -> None:
    cfg.MODEL.CONVNEXT = CN()
    # timm model name of the ConvNeXt trunk, e.g. convnext_atto ... convnext_xlarge.
    cfg.MODEL.CONVNEXT.NAME = "convnext_tiny"
    # Stages given to the FPN, named res2..res5 (strides 4, 8, 16, 32).
    cfg.MODEL.CONVNEXT.OUT_FEATURES = ["res3", "res4", "res5"]
    # Stochastic depth (drop-path) rate of the trunk.
    cfg.MODEL.CONVNEXT.DROP_PATH_RATE = 0.1
    # Initial layer-scale gamma of every block (timm's ls_init_value; ConvNeXt's 1e-6 makes each
    # residual block start near the identity). Negative: timm's choice for the model (1e-6 for
    # ConvNeXt, no layer scale for ConvNeXt-V2). Overwritten by loaded trunk weights.
    cfg.MODEL.CONVNEXT.LAYER_SCALE_INIT = -1.0
    # Blocks' MLPs as 1x1 convs ("true") or linear layers on channels-last tensors ("false",
    # faster on the CPU); "" keeps timm's choice for the model (1x1 convs for atto to nano).
    # Trunk weights load into either layout.
    cfg.MODEL.CONVNEXT.CONV_MLP = ""
    # Freeze the stem (1) and the first k-1 stages (k = 2..5); 0 freezes nothing.
    cfg.MODEL.CONVNEXT.FREEZE_AT = 0
    # Local file with trunk weights: a timm state dict (.pth/.bin/.safetensors) or a detectron2
    # checkpoint ({"model": ...}). Empty: random init (or MODEL.WEIGHTS for the whole model).
    cfg.MODEL.CONVNEXT.WEIGHTS = ""
    # Let timm download ImageNet weights when WEIGHTS is empty. Off: nothing is ever downloaded.
    cfg.MODEL.CONVNEXT.PRETRAINED_DOWNLOAD = False
    # FPN top block on top of the last level: "p6p7" (RetinaNet/FCOS style), "maxpool", or "none".
    cfg.MODEL.FPN.TOP_BLOCK = "p6p7"
    # Input of the P6/P7 block: "p5" (FPN output) or "res5" (trunk output).
    cfg.MODEL.FPN.TOP_BLOCK_IN = "p5"
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]


def _add_head_config(cfg: CN) -> None:
    cfg.MODEL.VCLR_HEAD = CN()
    # The head class in VCLR_HEAD_REGISTRY (vclr_d2/modeling/head.py).
    cfg.MODEL.VCLR_HEAD.NAME = "VCLRHead"
    # FPN levels the dense head runs on.
    cfg.MODEL.VCLR_HEAD.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # Number of 3x3 conv + norm + ReLU layers in each of the two towers (objectness, box).
    cfg.MODEL.VCLR_HEAD.NUM_CONVS = 4
    # Norm of the towers and the mask branch, a detectron2 norm name ("GN": 32-group GroupNorm).
    cfg.MODEL.VCLR_HEAD.NORM = "GN"
    # Prior probability of objectness at init (bias = -log((1 - p) / p)).
    cfg.MODEL.VCLR_HEAD.PRIOR_PROB = 0.01
    # Dimension D of the object embedding q used by L_sim.
    cfg.MODEL.VCLR_HEAD.EMBED_DIM = 256
    # "LN": q is layer-normalised over channels and the predictors read it linearly (the
    # official v-CLR: L_sim on the LayerNorm'd query the heads read); "none": raw q, the
    # predictors read ReLU(q) (the first release).
    cfg.MODEL.VCLR_HEAD.EMBED_NORM = "LN"
    # Quality branch: "none", "iou" or "centerness"; multiplies the objectness at inference.
    cfg.MODEL.VCLR_HEAD.QUALITY = "none"
    # Mask coefficients per location (= channels of the stride-8 mask feature map).
    cfg.MODEL.VCLR_HEAD.MASK_DIM = 32
    # Channels of the convs in the mask-feature branch.
    cfg.MODEL.VCLR_HEAD.MASK_BRANCH_CHANNELS = 128
    # FPN levels fused by the mask-feature branch; the first one sets its stride (8 for p3).
    cfg.MODEL.VCLR_HEAD.MASK_IN_FEATURES = ["p3", "p4", "p5"]
    # Upsampling factor (1 or 2) inside the mask-feature branch, YOLACT-style: 2 gives mask
    # features at half the finest level's stride (4 for p3) for one more conv.
    cfg.MODEL.VCLR_HEAD.MASK_UPSAMPLE = 1
    # Stride of the maps on which the mask loss is computed (mask logits upsampled, targets
    # area-pooled). Masks at all are switched by detectron2's MODEL.MASK_ON.
    cfg.MODEL.VCLR_HEAD.MASK_LOSS_STRIDE = 4
    # Matched targets per image whose masks enter the mask loss (cost control), -1 = all.
    cfg.MODEL.VCLR_HEAD.MAX_MASKS_PER_IMAGE = 64

    cfg.MODEL.VCLR_MATCHER = CN()
    # The matcher class in VCLR_MATCHER_REGISTRY: "HungarianMatcher" (one-to-one, scipy
    # linear_sum_assignment) or "DynamicKMatcher" (one-to-many, SimOTA-style).
    cfg.MODEL.VCLR_MATCHER.NAME = "HungarianMatcher"
    # Cost weights: C = w_cls * C_focal + w_l1 * L1(box) + w_giou * (-GIoU).
    cfg.MODEL.VCLR_MATCHER.COST_CLASS = 2.0
    cfg.MODEL.VCLR_MATCHER.COST_BOX_L1 = 5.0
    cfg.MODEL.VCLR_MATCHER.COST_GIOU = 2.0
    # Focal cost alpha and gamma.
    cfg.MODEL.VCLR_MATCHER.FOCAL_ALPHA = 0.25
    cfg.MODEL.VCLR_MATCHER.FOCAL_GAMMA = 2.0
    # Centre prior: a location is a candidate for a target when it lies inside the target box
    # and within CENTER_RADIUS strides of its centre.
    cfg.MODEL.VCLR_MATCHER.CENTER_RADIUS = 2.5
    # dynamic_k: number of top-IoU candidates summed to get k per target.
    cfg.MODEL.VCLR_MATCHER.DYNAMIC_K_TOPK = 10

    cfg.MODEL.VCLR_LOSS = CN()
    # The criterion class in VCLR_CRITERION_REGISTRY (vclr_d2/modeling/criterion.py).
    cfg.MODEL.VCLR_LOSS.NAME = "VCLRCriterion"
    # Per-term weights inside L_obj and L_gt (paper: dice 5, mask BCE 5, score 4, L1 5, GIoU 2).
    cfg.MODEL.VCLR_LOSS.DICE_WEIGHT = 5.0
    cfg.MODEL.VCLR_LOSS.MASK_WEIGHT = 5.0
    cfg.MODEL.VCLR_LOSS.SCORE_WEIGHT = 4.0
    cfg.MODEL.VCLR_LOSS.BOX_L1_WEIGHT = 5.0
    cfg.MODEL.VCLR_LOSS.GIOU_WEIGHT = 2.0
    # Weight of the quality-branch BCE (only with MODEL.VCLR_HEAD.QUALITY != "none").
    cfg.MODEL.VCLR_LOSS.QUALITY_WEIGHT = 1.0
    # Focal loss on objectness: alpha, gamma.
    cfg.MODEL.VCLR_LOSS.FOCAL_ALPHA = 0.25
    cfg.MODEL.VCLR_LOSS.FOCAL_GAMMA = 2.0
    # Objectness loss: "joint" = one focal loss over all locations (the official code),
    # positives weighted by lambda_gt / lambda_match * lambda_obj, normalised by the number of
    # positive locations; "split" = one focal term in L_gt and one in L_obj, each over all
    # background locations (the first release: background counted twice).
    cfg.MODEL.VCLR_LOSS.SCORE_LOSS = "joint"
    # Objectness target of a positive location: "binary" (1, focal loss; the official) or
    # "iou" (the IoU of its predicted box with its target, quality focal loss of GFL with
    # beta = FOCAL_GAMMA): scores then rank boxes by localisation quality, which decides the
    # box NMS keeps when a dense head predicts many boxes per object.
    cfg.MODEL.VCLR_LOSS.SCORE_TARGET = "binary"
    # lambda_gt: weight of L_gt (student matched to ground truth).
    cfg.MODEL.VCLR_LOSS.GT_WEIGHT = 1.0
    # lambda_obj: weight of L_obj (student matched to proposals).
    cfg.MODEL.VCLR_LOSS.OBJ_WEIGHT = 1.0
    # lambda_sim: weight of L_sim = mean(1 - cos(q_S, sg(q_T))).
    cfg.MODEL.VCLR_LOSS.SIM_WEIGHT = 1.0
    # Centre q_S and q_T on their batch mean over all locations (no gradient through the mean)
    # before the cosine of L_sim, so that a direction shared by every location cannot satisfy
    # it. Not in the paper (False = the paper's loss); see docs/demo.md.
    cfg.MODEL.VCLR_LOSS.SIM_CENTER = False
    # Form of L_sim: "cosine" = mean(1 - cos(q_S, sg(q_T))) (the paper); "contrastive" =
    # cross-entropy over the cosines of q_S with the teacher's embedding (prototype) of every
    # target of the batch, divided by SIM_TEMPERATURE, its own target being the class (not in
    # the paper: a direction shared by every location cannot satisfy it; docs/experiments.md).
    cfg.MODEL.VCLR_LOSS.SIM_FORM = "cosine"
    cfg.MODEL.VCLR_LOSS.SIM_TEMPERATURE = 0.2
    # lambda_match: multiplies (lambda_obj * L_obj + lambda_sim * L_sim).
    cfg.MODEL.VCLR_LOSS.MATCH_WEIGHT = 1.0
    # Soft proposal targets (CuVLER's self-training): the objectness loss of a location matched
    # to a proposal is multiplied by the proposal's score (vclr_d2/modeling/soft_targets.py).
    cfg.MODEL.VCLR_LOSS.PROPOSAL_SCORE_WEIGHTING = False


def _add_vclr_model_config(cfg: CN) -> None:
    cfg.MODEL.VCLR = CN()
    # m: teacher <- m * teacher + (1 - m) * student after each optimizer step.
    cfg.MODEL.VCLR.EMA_DECAY = 0.999
    # Evaluate with the EMA teacher's weights (the paper's protocol); False uses the student.
    cfg.MODEL.VCLR.TEST_WITH_TEACHER = True
    # Run the teacher and L_sim at all. False (with INPUT.VIEWS.NAMES = ["natural"]) gives the
    # plain class-agnostic baseline detector.
    cfg.MODEL.VCLR.SIM_ON = True
    # Student-only augmentations applied inside the model.
    # Patch mixing: x <- lam * x + (1 - lam) * up(random (h/8 x w/8) patch), lam ~ U[LOW, 1].
    cfg.MODEL.VCLR.PATCH_MIX_PROB = 1.0
    cfg.MODEL.VCLR.PATCH_MIX_LAMBDA_LOW = 0.5
    # Random erasing on the normalised student image, fill 0: probability (the official code
    # erases every student image), area fraction range (uniform) and aspect-ratio range
    # (log-uniform).
    cfg.MODEL.VCLR.RANDOM_ERASE_PROB = 1.0
    cfg.MODEL.VCLR.RANDOM_ERASE_SCALE = [0.02, 1.0 / 3]
    cfg.MODEL.VCLR.RANDOM_ERASE_RATIO = [0.3, 0.7]
    # Grayscale of the whole student batch, with this probability.
    cfg.MODEL.VCLR.GRAYSCALE_PROB = 0.5
    # Proposals whose box IoU with a ground-truth box exceeds this are dropped (the object is
    # already a ground-truth target); 1.0 keeps every proposal.
    cfg.MODEL.VCLR.PROPOSAL_GT_DEDUP_IOU = 0.7
    # Proposals whose score (the discoverer's confidence) is below this are dropped; 0.0 keeps
    # every proposal (the official code keeps the top-k per image whatever their score).
    cfg.MODEL.VCLR.PROPOSAL_MIN_SCORE = 0.0
    # Candidates kept per level before NMS at inference.
    cfg.MODEL.VCLR.TOPK_CANDIDATES = 1000
    # Class-agnostic NMS IoU threshold at inference.
    cfg.MODEL.VCLR.NMS_THRESH = 0.7
    # Minimum score kept at inference; 0 keeps everything (any threshold lowers recall).
    cfg.MODEL.VCLR.SCORE_THRESH = 0.0
    # Threshold on the mask probability that makes the binary pred_masks.
    cfg.MODEL.VCLR.MASK_THRESH = 0.5
    # When masks rescore detections, score = sqrt(objectness * maskness): "before_nms" rescores
    # every candidate before NMS and the cut to TEST.DETECTIONS_PER_IMAGE (the official order);
    # "after_nms" only the kept ones (the first release); "none" keeps objectness. Maskness is
    # measured inside the predicted box, where the mask loss trains the masks.
    cfg.MODEL.VCLR.MASK_RESCORE = "before_nms"
    # Pseudo-labels from the EMA teacher (not in the official v-CLR, whose teacher only gives
    # L_sim targets): its detections with a score >= SCORE_THRESH that overlap no ground truth or
    # proposal by more than TARGET_IOU (box IoU) join the proposals (L_obj), after NMS at
    # NMS_THRESH among them, at most MAX_PER_IMAGE per image, at training iterations
    # START_ITER <= it < END_ITER (END_ITER < 0: to the end of training; stopping them ends the
    # teacher's feedback loop on its own false detections, docs/experiments.md). The teacher
    # sees INPUT.VIEWS.TEACHER.
    cfg.MODEL.VCLR.PSEUDO_LABELS = CN()
    cfg.MODEL.VCLR.PSEUDO_LABELS.ENABLED = False
    cfg.MODEL.VCLR.PSEUDO_LABELS.SCORE_THRESH = 0.5
    cfg.MODEL.VCLR.PSEUDO_LABELS.MAX_PER_IMAGE = 10
    cfg.MODEL.VCLR.PSEUDO_LABELS.TARGET_IOU = 0.5
    cfg.MODEL.VCLR.PSEUDO_LABELS.NMS_THRESH = 0.5
    cfg.MODEL.VCLR.PSEUDO_LABELS.START_ITER = 0
    cfg.MODEL.VCLR.PSEUDO_LABELS.END_ITER = -1
    # Objectness-loss weight of the locations matched to a pseudo-label (their boxes and masks
    # are learned in any case). 0: the student's score there is not trained, so the teacher's
    # false detections are not confirmed (nor suppressed) by their own pseudo-labels.
    cfg.MODEL.VCLR.PSEUDO_LABELS.SCORE_WEIGHT = 1.0
    # [start, end]: the student sees its drawn view (INPUT.VIEWS) at training iterations
    # start <= it < end (end < 0: to the end of training) and the natural image at the others
    # (a view schedule, not in the paper; views are logged as "natural" then). [0, -1]: always.
    cfg.MODEL.VCLR.VIEW_ITERS = [0, -1]


def _add_input_config(cfg: CN) -> None:
    cfg.INPUT.VIEWS = CN()
    # View names the student can be shown; "natural" is the image itself.
    cfg.INPUT.VIEWS.NAMES = ["natural", "depth", "style"]
    # Sampling probability of each name above (normalised); one view is drawn per image.
    cfg.INPUT.VIEWS.PROBS = [1.0 / 3, 1.0 / 3, 1.0 / 3]
    # Folder of each view's files. A relative folder sits next to the natural image's folder
    # (official layout: coco/train2017 -> coco/train2017_depth_cmap); "{split}" is replaced by
    # the natural folder's name. Empty for "natural". The defaults are the layout defined in
    # vclr_d2.data.views.layout, the one tools/generate_views.py writes.
    cfg.INPUT.VIEWS.DIRS = ["", DEPTH.folder, STYLE.folder]
    # File extension of each view's files (defaults: from the same layout).
    cfg.INPUT.VIEWS.EXTS = ["", DEPTH.ext, STYLE.ext]
    # The view the teacher sees: "natural" (the paper) or one of NAMES, read for every image
    # with the same geometry as the student's view.
    cfg.INPUT.VIEWS.TEACHER = "natural"
    # Absolute root under which relative view folders are looked up instead of next to the
    # natural image's folder; empty for the official layout.
    cfg.INPUT.VIEWS.ROOT = ""
    # When a view file is missing: False raises an error naming the path; True shows the
    # natural image instead and counts the fallback (logged per iteration as vclr/view_fallbacks).
    cfg.INPUT.VIEWS.FALLBACK_TO_NATURAL = False
    # Probability of a random crop before resizing (SPEC: 0.5, size 384-600).
    cfg.INPUT.CROP.PROB = 0.5
    # Scale jitter with a fixed-size crop (detectron2's ResizeScale + FixedSizeCrop, the "large
    # scale jitter" of its newer baselines) instead of INPUT.CROP + ResizeShortestEdge in
    # training: the image is resized to fit SIZE x SIZE times a scale drawn uniformly from
    # [MIN_SCALE, MAX_SCALE] (aspect kept), then a random crop of at most SIZE x SIZE is taken.
    # Every training image is then at most SIZE x SIZE, so a batch is never padded beyond it
    # (with crops of random aspect + a shortest-edge resize, the padded batch holds ~1.8x the
    # pixels of its images). Testing keeps INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST.
    cfg.INPUT.SCALE_JITTER = CN()
    cfg.INPUT.SCALE_JITTER.ENABLED = False
    cfg.INPUT.SCALE_JITTER.SIZE = 1024
    cfg.INPUT.SCALE_JITTER.MIN_SCALE = 0.1
    cfg.INPUT.SCALE_JITTER.MAX_SCALE = 2.0
    # Load proposals (pseudo instances) for L_obj from the dataset dicts.
    # Not detectron2's MODEL.LOAD_PROPOSALS on purpose: that one makes detectron2's loaders read
    # precomputed RPN boxes (DATASETS.PROPOSAL_FILES_TRAIN, pickles of boxes + objectness
    # logits) and feed them to the RoI heads; v-CLR's proposals are training *targets* with
    # masks, read by VCLRDatasetMapper from the dataset dicts. MODEL.LOAD_PROPOSALS stays False.
    cfg.INPUT.LOAD_PROPOSALS = True


def _add_dataset_config(cfg: CN) -> None:
    cfg.DATASETS.OPENWORLD = CN()
    # Root of the official open-world files; empty = $DETECTRON2_DATASETS (default "datasets").
    cfg.DATASETS.OPENWORLD.ROOT = ""
    # How proposals are told from ground truth inside a mixed training JSON: "field:<key>"
    # (key present and truthy), "has:<key>", "category:<id>[,<id>]" or "none" (all ground truth).
    cfg.DATASETS.OPENWORLD.PROPOSAL_RULE = "field:is_proposal"
    # Separate proposals files of official datasets, as "<dataset name>=<path>" entries.
    # Not detectron2's DATASETS.PROPOSAL_FILES_TRAIN/TEST: those are pickles of RPN boxes that
    # detectron2's loaders attach as "proposal_boxes"; these are COCO JSONs of pseudo-instances
    # (boxes, masks, scores) merged into the dataset dicts at registration, by dataset name.
    cfg.DATASETS.OPENWORLD.PROPOSAL_FILES = []
    # Your own datasets, each [name, COCO json file, image folder] or [name, json, images,
    # separate proposals file]; registered like the official ones (class-agnostic, open-world
    # evaluator; proposals inside the json told apart by PROPOSAL_RULE).
    cfg.DATASETS.OPENWORLD.CUSTOM = []
    # Datasets registered as another registered dataset with its proposals replaced by those of
    # a file, as "<new name>=<registered dataset>:<proposals file>" entries (e.g. discovered
    # objects, or a self-training round's proposals written by tools/self_train.py).
    cfg.DATASETS.OPENWORLD.PROPOSAL_VARIANTS = []
    cfg.DATASETS.SYNTHETIC = CN()
    # Number of images of the synthetic training split.
    cfg.DATASETS.SYNTHETIC.NUM_TRAIN = 1000
    # Number of images of each synthetic validation split.
    cfg.DATASETS.SYNTHETIC.NUM_VAL = 200
    # Side of the square synthetic images, in pixels.
    cfg.DATASETS.SYNTHETIC.IMAGE_SIZE = 128
    # Seed of the synthetic generator.
    cfg.DATASETS.SYNTHETIC.SEED = 0
    # Shape families annotated in training and never annotated (the known/novel split); empty =
    # the frozen defaults (ellipse, rectangle, triangle, star / ring, cross, hexagon, crescent).
    # Another split is a held-out variant of the set (docs/experiments.md): set
    # TEST.OPENWORLD.KNOWN_CLASSES to the same known families.
    cfg.DATASETS.SYNTHETIC.KNOWN_FAMILIES = []
    cfg.DATASETS.SYNTHETIC.NOVEL_FAMILIES = []
    # Cache folder of the generated synthetic dataset (COCO format); empty = under
    # $DETECTRON2_DATASETS/synth_openworld.
    cfg.DATASETS.SYNTHETIC.ROOT = ""


def _add_solver_config(cfg: CN) -> None:
    # Optimizer: "ADAMW" (the paper's) or "SGD".
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    # Learning-rate multiplier of the backbone trunk (paper: 0.1).
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    # Autocast dtype when SOLVER.AMP.ENABLED: "float16" (with a gradient scaler), "bfloat16", or
    # "" for float16 on CUDA and bfloat16 on the CPU. Matching and losses stay in float32.
    cfg.SOLVER.AMP.DTYPE = ""


def _add_test_config(cfg: CN) -> None:
    cfg.TEST.OPENWORLD = CN()
    # k values of AR@k reported by the open-world evaluator.
    cfg.TEST.OPENWORLD.MAX_DETS = [1, 10, 20, 30, 50, 100, 300]
    # Known-class names for the seen/unseen breakdown on label-keeping evaluation sets; empty
    # disables the breakdown.
    cfg.TEST.OPENWORLD.KNOWN_CLASSES = []
