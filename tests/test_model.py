"""The VCLR meta-architecture and its dense head, on a tiny convnext_atto model."""

import math

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from torchvision.ops import box_iou

from tests.model_utils import SCENE_BOXES, instances, scene, training_input
from vclr_d2.modeling import VCLR, VCLRHead
from vclr_d2.modeling.criterion import dice_loss
from vclr_d2.modeling.postprocess import paste_masks


def _student_params(model):
    return {n: p for n, p in model.named_parameters() if not n.startswith("teacher.")}


def test_head_output_shapes(model_cfg):
    model_cfg.MODEL.FPN.TOP_BLOCK = "p6p7"
    model_cfg.MODEL.VCLR_HEAD.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    model_cfg.MODEL.VCLR_HEAD.QUALITY = "iou"
    model = build_model(model_cfg)
    assert isinstance(model, VCLR) and isinstance(model.head, VCLRHead)
    out = model.head(model.backbone(torch.randn(2, 3, 96, 160)))
    sizes = [12 * 20, 6 * 10, 3 * 5, 2 * 3, 1 * 2]
    r = sum(sizes)
    assert out.level_sizes == sizes
    assert out.objectness.shape == (2, r) and out.quality.shape == (2, r)
    assert out.boxes.shape == (2, r, 4)
    assert out.embeddings.shape == (2, r, 64)
    assert out.mask_coeffs.shape == (2, r, 32)
    assert out.mask_features.shape == (2, 32, 12, 20)
    assert out.locations.shape == (r, 2) and out.strides.shape == (r,)
    assert out.strides[sizes[0]].item() == 16 and out.strides[-1].item() == 128
    assert torch.equal(out.locations[0], torch.tensor([4.0, 4.0]))
    # boxes contain their own location: distances to the sides are >= 0
    loc = out.locations[None]
    assert (out.boxes[..., :2] <= loc + 1e-5).all() and (out.boxes[..., 2:] >= loc - 1e-5).all()


@pytest.mark.parametrize("score_loss", ["joint", "split"])
def test_losses_are_finite_and_reach_every_trainable_parameter(model_cfg, score_loss):
    model_cfg.MODEL.VCLR_HEAD.QUALITY = "centerness"
    model_cfg.MODEL.VCLR_LOSS.SCORE_LOSS = score_loss
    model = build_model(model_cfg).train()
    image, masks = scene()
    batch = [training_input(image, masks, proposals=[(0, 0, 30, 30), (10, 12, 50, 41)]),
             training_input(scene(1)[0], masks[:0], boxes=[])]
    losses = model(batch)
    terms = ("box_l1", "giou", "dice", "mask") if score_loss == "joint" else (
        "score", "box_l1", "giou", "dice", "mask")
    expected = {f"loss_{t}_{k}" for t in ("gt", "obj") for k in terms}
    expected |= {"loss_sim", "loss_quality"} | ({"loss_score"} if score_loss == "joint" else set())
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    missing = [n for n, p in _student_params(model).items() if p.grad is None]
    assert missing == []
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("teacher."))


@pytest.mark.parametrize("score_loss", ["joint", "split"])
def test_images_without_any_target_give_connected_losses(model_cfg, score_loss):
    model_cfg.MODEL.VCLR_LOSS.SCORE_LOSS = score_loss
    model = build_model(model_cfg).train()
    image = scene()[0]
    batch = [training_input(image, np.zeros((0, 128, 128), bool), boxes=[], proposals=[])] * 2
    losses = model(batch)
    # the joint focal loss still pushes every location to background (normalised by 1, as
    # the official loss clamps its number of targets); everything else is an exact zero
    background = losses.pop("loss_score", None)
    assert (background is not None and background.item() > 0) == (score_loss == "joint")
    assert {k: v.item() for k, v in losses.items()} == {k: 0.0 for k in losses}
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in _student_params(model).values())


def test_joint_score_loss_counts_background_once_and_weights_positives_by_term(model_cfg):
    from types import SimpleNamespace

    from torchvision.ops import sigmoid_focal_loss

    from vclr_d2.modeling.criterion import Targets, VCLRCriterion

    model_cfg.MODEL.VCLR_LOSS.GT_WEIGHT = 2.0
    model_cfg.MODEL.VCLR_LOSS.OBJ_WEIGHT = 0.5
    model_cfg.MODEL.VCLR_LOSS.MATCH_WEIGHT = 3.0
    logits = torch.linspace(-3, 3, 10)[None]
    out = SimpleNamespace(objectness=logits, boxes=torch.tensor([[0.0, 0, 8, 8]]).expand(1, 10, 4),
                          embeddings=torch.zeros(1, 10, 2), mask_coeffs=None, quality=None)
    t = Targets(boxes=torch.tensor([[0.0, 0, 8, 8]] * 2), is_gt=torch.tensor([True, False]),
                masks=None, has_mask=torch.tensor([False, False]))
    matches = [(torch.tensor([2, 7]), torch.tensor([0, 1]))]
    label = torch.zeros(1, 10)
    label[0, [2, 7]] = 1
    focal = sigmoid_focal_loss(logits, label, alpha=0.25, gamma=2.0, reduction="none")[0]
    background = focal.sum() - focal[2] - focal[7]
    joint = VCLRCriterion(model_cfg).detection_losses(out, [t], matches, [(8, 8)], None)
    # location 2 matched to ground truth (lambda_gt 2), 7 to a proposal (3 * 0.5), 2 positives
    expected = 4.0 * (background + 2.0 * focal[2] + 1.5 * focal[7]) / 2
    assert joint["loss_score"].item() == pytest.approx(expected.item(), rel=1e-5)
    model_cfg.MODEL.VCLR_LOSS.SCORE_LOSS = "split"
    split = VCLRCriterion(model_cfg).detection_losses(out, [t], matches, [(8, 8)], None)
    # the first release: each term has its own focal loss over all background locations
    assert split["loss_gt_score"].item() == pytest.approx(
        (2.0 * 4.0 * (background + focal[2]) / 1).item(), rel=1e-5)
    assert split["loss_obj_score"].item() == pytest.approx(
        (1.5 * 4.0 * (background + focal[7]) / 1).item(), rel=1e-5)


def test_proposals_duplicating_ground_truth_are_dropped(model_cfg):
    model = build_model(model_cfg)
    image, masks = scene()
    x = training_input(image, masks, proposals=[SCENE_BOXES[0], (0, 0, 8, 8)])
    (t,) = model.prepare_targets([x], (128, 128))
    assert t.is_gt.tolist() == [True] * 4 + [False]
    assert t.boxes[-1].tolist() == [0, 0, 8, 8]
    assert t.has_mask.tolist() == [True] * 4 + [False]
    assert t.masks.shape == (5, 32, 32)
    # area-pooled targets: the first ellipse's mask fraction matches its pixel count
    assert abs(t.masks[0].sum().item() * 16 - masks[0].sum()) < 1e-3


def test_one_step_changes_student_and_teacher_follows_ema(model_cfg):
    model = build_model(model_cfg).train()
    model.ema_decay = 0.9
    before_s = {k: v.detach().clone() for k, v in _student_params(model).items()}
    before_t = {k: v.detach().clone() for k, v in model.teacher.state_dict().items()}
    image, masks = scene()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    sum(model([training_input(image, masks)]).values()).backward()
    opt.step()
    model.update_teacher()
    after_s = _student_params(model)
    changed = {k for k in before_s if not torch.equal(before_s[k], after_s[k])}
    # Adam moves every parameter whose gradient is not zero (box scales of levels without a
    # positive have none)
    assert changed == {k for k, p in after_s.items() if p.grad.abs().sum() > 0}
    assert len(changed) >= 0.95 * len(before_s)
    for k, t in model.teacher.state_dict().items():
        expected = 0.9 * before_t[k] + (1 - 0.9) * after_s[k].detach()
        assert torch.equal(t, expected), k
        assert torch.equal(t, before_t[k]) == (k not in changed), k


def test_sim_loss_is_zero_for_identical_branches(model_cfg):
    model = build_model(model_cfg).train()
    image, masks = scene()
    losses = model([training_input(image, masks, proposals=[(0, 0, 30, 30)])])
    assert losses["loss_sim"].item() == pytest.approx(0.0, abs=1e-6)


def test_sim_loss_gradient_reaches_only_the_student(model_cfg):
    model = build_model(model_cfg).train()
    image, masks = scene()
    view = 255 - image  # a different view of the same geometry
    losses = model([training_input(view, masks, natural=image)])
    assert losses["loss_sim"].item() > 1e-3
    losses["loss_sim"].backward()
    assert model.head.embed.weight.grad.abs().sum() > 0
    assert model.backbone.bottom_up.stem[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.teacher.parameters())
    # the objectness predictor does not lie on q's path, so L_sim gives it no gradient
    assert model.head.objectness.weight.grad is None


def test_centred_sim_loss_ignores_a_shared_direction(model_cfg):
    from types import SimpleNamespace

    from vclr_d2.modeling.criterion import VCLRCriterion

    # every location = a large shared vector (5, 5, 5, 5) + a one-hot part; the student's
    # one-hot parts are those of the next location, i.e. wrong for every pair
    eye = torch.eye(4)
    teacher = SimpleNamespace(embeddings=(5 + eye)[None])
    student = SimpleNamespace(embeddings=(5 + eye.roll(-1, dims=0))[None].requires_grad_())
    matches = [(torch.tensor([0, 1]), torch.tensor([0, 1]))]
    plain = VCLRCriterion(model_cfg)
    model_cfg.MODEL.VCLR_LOSS.SIM_CENTER = True
    centred = VCLRCriterion(model_cfg)
    assert not plain.sim_center and centred.sim_center
    # plain: cos = 110 / 111 although the informative parts disagree
    assert plain.sim_loss(student, teacher, matches, matches, [2]).item() == pytest.approx(
        1 / 111, abs=1e-6)
    # centred on the mean (5.25 everywhere): cos(e_j+1 - 1/4, e_j - 1/4) = -1/3
    loss = centred.sim_loss(student, teacher, matches, matches, [2])
    assert loss.item() == pytest.approx(4 / 3, abs=1e-6)
    loss.backward()
    assert student.embeddings.grad.abs().sum() > 0
    # identical branches still give zero
    same = SimpleNamespace(embeddings=teacher.embeddings.clone())
    assert centred.sim_loss(same, teacher, matches, matches, [2]).item() == pytest.approx(
        0.0, abs=1e-6)


def _reference_cosine_sim_loss(emb_s, emb_t, s_matches, t_matches, num_targets):
    """The paper's L_sim as the first release computed it, image by image."""
    terms = []
    for i, ((s_idx, s_tgt), (t_idx, t_tgt), k) in enumerate(
            zip(s_matches, t_matches, num_targets)):
        q_t = torch.nn.functional.normalize(emb_t[i, t_idx], dim=-1)
        mean_t = torch.zeros(k, q_t.shape[1]).index_add_(0, t_tgt, q_t)
        has_t = torch.zeros(k, dtype=torch.bool)
        has_t[t_tgt] = True
        keep = has_t[s_tgt]
        terms.append(1 - torch.nn.functional.cosine_similarity(
            emb_s[i, s_idx[keep]], mean_t[s_tgt[keep]], dim=-1))
    return torch.cat(terms).sum() / sum(len(t) for t in terms)


def _two_image_batch():
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(0)
    student = SimpleNamespace(embeddings=torch.randn(2, 30, 8, generator=g))
    teacher = SimpleNamespace(embeddings=torch.randn(2, 30, 8, generator=g))
    # image 0: 3 targets, the teacher matched 0 and 2; image 1: 2 targets, both matched
    s_matches = [(torch.tensor([1, 4, 7, 9]), torch.tensor([0, 1, 2, 2])),
                 (torch.tensor([0, 3, 5]), torch.tensor([1, 0, 1]))]
    t_matches = [(torch.tensor([2, 6, 8]), torch.tensor([0, 2, 2])),
                 (torch.tensor([11, 12]), torch.tensor([0, 1]))]
    return student, teacher, s_matches, t_matches, [3, 2]


def test_cosine_sim_loss_equals_the_per_image_reference(model_cfg):
    from vclr_d2.modeling.criterion import VCLRCriterion

    student, teacher, s_m, t_m, k = _two_image_batch()
    criterion = VCLRCriterion(model_cfg)
    assert criterion.sim_form == "cosine"
    got = criterion.sim_loss(student, teacher, s_m, t_m, k)
    # bit for bit: runs made before SIM_FORM existed repeat unchanged
    assert torch.equal(got, _reference_cosine_sim_loss(student.embeddings, teacher.embeddings,
                                                       s_m, t_m, k))


def test_contrastive_sim_loss_values_and_shared_direction(model_cfg):
    from types import SimpleNamespace

    from vclr_d2.modeling.criterion import VCLRCriterion

    model_cfg.MODEL.VCLR_LOSS.SIM_FORM = "contrastive"
    model_cfg.MODEL.VCLR_LOSS.SIM_TEMPERATURE = 0.5
    criterion = VCLRCriterion(model_cfg)
    student, teacher, s_m, t_m, k = _two_image_batch()
    # by hand: 4 prototypes (image 0: targets 0, 2; image 1: targets 0, 1); the student's
    # location 4 of image 0 (target 1, unmatched by the teacher) is left out
    F = torch.nn.functional
    q_t0 = F.normalize(teacher.embeddings[0, [2, 6, 8]], dim=-1)
    q_t1 = F.normalize(teacher.embeddings[1, [11, 12]], dim=-1)
    protos = F.normalize(torch.stack([q_t0[0], q_t0[1] + q_t0[2], q_t1[0], q_t1[1]]), dim=-1)
    q_s = F.normalize(torch.cat([student.embeddings[0, [1, 7, 9]],
                                 student.embeddings[1, [0, 3, 5]]]), dim=-1)
    expected = F.cross_entropy(q_s @ protos.T / 0.5, torch.tensor([0, 1, 1, 3, 2, 3]))
    got = criterion.sim_loss(student, teacher, s_m, t_m, k)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)

    # a large direction shared by every location: the cosine form is nearly satisfied although
    # each student location carries another target's part; the contrastive form is not
    eye = torch.eye(4)
    teacher = SimpleNamespace(embeddings=(5 + eye)[None])
    student = SimpleNamespace(embeddings=(5 + eye.roll(-1, dims=0))[None].requires_grad_())
    matches = [(torch.arange(4), torch.arange(4))]
    model_cfg.MODEL.VCLR_LOSS.SIM_FORM = "cosine"
    assert VCLRCriterion(model_cfg).sim_loss(
        student, teacher, matches, matches, [4]).item() == pytest.approx(1 / 111, abs=1e-6)
    wrong = criterion.sim_loss(student, teacher, matches, matches, [4])
    right = criterion.sim_loss(SimpleNamespace(embeddings=teacher.embeddings.clone()), teacher,
                               matches, matches, [4])
    # with parts that agree, the own prototype wins: lower than chance (log 4) and than wrong
    assert right.item() < math.log(4) < wrong.item()
    wrong.backward()
    assert student.embeddings.grad.abs().sum() > 0


@pytest.mark.parametrize("key,value", [("SIM_FORM", "infonce"), ("SIM_TEMPERATURE", 0.0)])
def test_sim_loss_rejects_bad_config(model_cfg, key, value):
    from vclr_d2.modeling.criterion import VCLRCriterion

    setattr(model_cfg.MODEL.VCLR_LOSS, key, value)
    with pytest.raises(ValueError, match=f"MODEL.VCLR_LOSS.{key}"):
        VCLRCriterion(model_cfg)


def test_baseline_runs_no_teacher_and_has_no_sim_loss(model_cfg):
    model_cfg.MODEL.VCLR.SIM_ON = False
    model = build_model(model_cfg).train()
    calls = []
    model.teacher["backbone"].register_forward_hook(lambda *a: calls.append(1))
    image, masks = scene()
    losses = model([training_input(image, masks)])
    assert "loss_sim" not in losses and calls == []


def test_save_then_load_restores_student_and_teacher(model_cfg, tmp_path):
    model = build_model(model_cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    model.update_teacher(0.5)
    assert not torch.equal(model.teacher["head"].embed.weight, model.head.embed.weight)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_final")
    other = build_model(model_cfg)
    DetectionCheckpointer(other).load(str(tmp_path / "model_final.pth"))
    ours, theirs = model.state_dict(), other.state_dict()
    assert ours.keys() == theirs.keys()
    assert any(k.startswith("teacher.head.") for k in ours)
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k


def test_checkpoint_without_teacher_initialises_teacher_from_student(model_cfg, tmp_path):
    model = build_model(model_cfg)
    student = {k: v for k, v in model.state_dict().items() if not k.startswith("teacher.")}
    torch.save({"model": student}, tmp_path / "student_only.pth")
    other = build_model(model_cfg)
    DetectionCheckpointer(other).load(str(tmp_path / "student_only.pth"))
    assert torch.equal(other.teacher["head"].embed.weight, model.head.embed.weight)


@pytest.mark.parametrize("with_teacher", [True, False])
def test_inference_output_format(model_cfg, with_teacher):
    model_cfg.TEST.DETECTIONS_PER_IMAGE = 50
    model_cfg.MODEL.VCLR.TEST_WITH_TEACHER = with_teacher
    model = build_model(model_cfg).eval()
    with torch.no_grad():
        model.teacher["head"].objectness.bias.fill_(5.0)  # teacher differs from the student
    image = scene()[0][:, :96, :]
    (out,) = model([{"image": image, "height": 192, "width": 256}])
    inst = out["instances"]
    assert inst.image_size == (192, 256)
    assert 0 < len(inst) <= 50
    assert torch.all(inst.scores[:-1] >= inst.scores[1:])
    assert inst.pred_masks.dtype == torch.bool and inst.pred_masks.shape[1:] == (192, 256)
    assert inst.pred_classes.tolist() == [0] * len(inst)
    b = inst.pred_boxes.tensor
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= 256).all() and (b[:, 3] <= 192).all()
    # masks never extend outside their box (box crop, YOLACT-style)
    ys, xs = torch.nonzero(inst.pred_masks[0], as_tuple=True)
    if len(xs):
        assert xs.min() >= b[0, 0].floor() - 1 and xs.max() <= b[0, 2].ceil()
    # objectness bias 5 on the teacher lifts every score: its use is visible
    assert (inst.scores.max() > 0.5) == with_teacher


def test_pasted_masks_are_the_same_windowed_and_whole_image():
    # a direct reference: resample every mask on the whole output image, keep the pixels whose
    # centre is inside the box (box_mask), threshold, and average the kept probabilities
    import torch.nn.functional as F

    from vclr_d2.modeling.boxes import box_mask

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 12, 16, generator=g) * 3  # stride 8 over a padded 96 x 128 input
    size, out_size = (90, 120), (180, 200)  # unpadded input, then resized output
    xy = torch.rand(40, 2, generator=g) * torch.tensor([200.0, 180.0])
    wh = torch.rand(40, 2, generator=g) * 80
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[0] = torch.tensor([50.2, 60.7, 50.4, 60.9])  # smaller than a pixel: one pixel
    boxes[1] = torch.tensor([150.0, 100.0, 260.0, 300.0])  # past the image's corner
    boxes[2] = torch.tensor([10.0, 10.0, 10.0, 10.0])  # empty box: still the pixel of its centre
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, 200)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, 180)
    gx = (torch.arange(200) + 0.5) * (120 / 200) * 2 / (8 * 16) - 1
    gy = (torch.arange(180) + 0.5) * (90 / 180) * 2 / (8 * 12) - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
    probs = F.grid_sample(logits[None], grid, mode="bilinear", padding_mode="border",
                          align_corners=False)[0].sigmoid() * box_mask(boxes, out_size, 1)
    ref = probs > 0.5
    ref_maskness = (probs * ref).flatten(1).sum(1) / ref.flatten(1).sum(1).clamp(min=1)
    assert ref[0].sum() <= 1 and ref.any(dim=(1, 2)).sum() > 20  # the case is not trivial
    for windowed in (True, False):
        masks, maskness = paste_masks(logits, 8, size, out_size, boxes, 0.5,
                                           windowed=windowed, chunk=16)
        assert masks.dtype == torch.bool and masks.shape == (40, 180, 200)
        assert torch.equal(masks, ref), windowed
        assert torch.allclose(maskness, ref_maskness, atol=1e-6), windowed
    masks, maskness = paste_masks(logits[:0], 8, size, out_size, boxes[:0], 0.5)
    assert masks.shape == (0, 180, 200) and maskness.shape == (0,)


def test_dice_loss_values():
    logits = torch.tensor([[20.0, 20.0, -20.0, -20.0]])
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    ones = torch.ones_like(target)
    assert dice_loss(logits, target, ones).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_loss(-logits, target, ones).item() == pytest.approx(1 - 1 / 5, abs=1e-6)
    # all-foreground prediction: 1 - (2 * 2 + 1) / (4 + 2 + 1); pixels of weight 0 do not count
    everywhere = torch.full_like(logits, 20.0)
    assert dice_loss(everywhere, target, ones).item() == pytest.approx(2 / 7, abs=1e-6)
    assert dice_loss(everywhere, target, target).item() == pytest.approx(0.0, abs=1e-6)


def _train(model, batch, iters, lr=1e-3):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    model.train()
    for _ in range(iters):
        loss = sum(model(batch).values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        model.update_teacher()


@pytest.mark.slow
@pytest.mark.parametrize("matcher", ["HungarianMatcher", "DynamicKMatcher"])
def test_overfits_one_image_to_full_recall(model_cfg, matcher):
    """A real learning check: fails if a loss, the box decoding or the matcher is broken."""
    model_cfg.MODEL.VCLR_MATCHER.NAME = matcher
    model_cfg.MODEL.VCLR.TEST_WITH_TEACHER = False
    model = build_model(model_cfg)
    image, masks = scene()
    _train(model, [training_input(image, masks)], iters=150)
    (out,) = model.eval()([{"image": image}])
    inst = out["instances"]
    gt = instances(SCENE_BOXES, masks, (128, 128))
    iou = box_iou(inst.pred_boxes.tensor[:100], gt.gt_boxes.tensor)
    recall = (iou.max(dim=0).values >= 0.5).float().mean().item()
    assert recall >= 0.9
    # the best box of each object also carries a mask that overlaps the object's mask
    best = iou.argmax(dim=0)
    pred = inst.pred_masks[best].flatten(1).float()
    true = torch.as_tensor(masks).flatten(1).float()
    mask_iou = (pred * true).sum(1) / ((pred + true) > 0).float().sum(1)
    assert (mask_iou >= 0.6).all(), mask_iou


def test_box_decoding_is_distances_times_stride_around_each_location(model_cfg):
    model = build_model(model_cfg)
    with torch.no_grad():
        model.head.box_pred.weight.zero_()
        model.head.box_pred.bias.copy_(torch.tensor([1.0, 2.0, 3.0, 0.5]))
    out = model.head(model.backbone(torch.randn(1, 3, 64, 96)))
    loc, stride = out.locations, out.strides[:, None]
    expected = torch.cat([loc - torch.tensor([1.0, 2.0]) * stride,
                          loc + torch.tensor([3.0, 0.5]) * stride], dim=1)
    torch.testing.assert_close(out.boxes[0], expected)
    assert out.boxes[0, 0].tolist() == [4 - 8, 4 - 16, 4 + 24, 4 + 4]


@pytest.mark.parametrize("embed_norm", ["LN", "none"])
def test_predictors_read_the_embedding_q_as_configured(model_cfg, embed_norm):
    import torch.nn.functional as F

    model_cfg.MODEL.VCLR_HEAD.EMBED_NORM = embed_norm
    head = build_model(model_cfg).head
    feats = {f"p{i}": torch.randn(2, 64, 2 ** (7 - i), 2 ** (7 - i)) for i in (3, 4, 5)}
    out = head(feats)
    q = out.embeddings  # (N, R, D)
    read = q if embed_norm == "LN" else F.relu(q)
    # objectness and mask coefficients are 1x1 convs of what the predictors read
    obj = read @ head.objectness.weight[:, :, 0, 0].T + head.objectness.bias
    coeff = read @ head.mask_coeff.weight[:, :, 0, 0].T + head.mask_coeff.bias
    torch.testing.assert_close(out.objectness, obj[..., 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.mask_coeffs, coeff, atol=1e-5, rtol=1e-5)
    if embed_norm == "LN":  # layer-normalised per location (unit affine at init)
        torch.testing.assert_close(q.mean(-1), torch.zeros(q.shape[:2]), atol=1e-5, rtol=0)
        torch.testing.assert_close(q.var(-1, unbiased=False), torch.ones(q.shape[:2]),
                                   atol=1e-3, rtol=0)
    else:
        assert (q < 0).any()  # raw, before the ReLU the predictors apply


@pytest.mark.parametrize("rescore", ["before_nms", "after_nms", "none"])
def test_mask_rescoring_before_nms_changes_which_box_is_kept(model_cfg, rescore):
    from types import SimpleNamespace

    from vclr_d2.modeling.head import HeadOutputs

    model_cfg.MODEL.VCLR.MASK_RESCORE = rescore
    model = build_model(model_cfg)
    # two locations with almost the same box: A has the higher objectness but a weak mask
    # (probability 0.525 inside its box), B a slightly lower objectness and a confident mask
    boxes = torch.tensor([[8.0, 8, 40, 40], [8.0, 8, 40, 41]])
    objectness = torch.logit(torch.tensor([0.9, 0.8]))
    coeffs = torch.tensor([[0.1], [5.0]])
    out = HeadOutputs(objectness=objectness, boxes=boxes, embeddings=torch.zeros(2, 4),
                      mask_coeffs=coeffs, quality=None, mask_features=torch.ones(1, 8, 8),
                      locations=torch.zeros(2, 2), strides=torch.full((2,), 8.0),
                      level_sizes=[2])
    head = SimpleNamespace(mask_stride=8,
                           mask_logits=lambda c, f: torch.einsum("pm,mhw->phw", c, f))
    inst = model.postprocessor(out, head, (64, 64), (64, 64))
    assert len(inst) == 1  # IoU 0.97: NMS keeps one
    kept_b = inst.pred_boxes.tensor[0, 3].item() == 41
    p_a, p_b = torch.sigmoid(torch.tensor(0.1)).item(), torch.sigmoid(torch.tensor(5.0)).item()
    if rescore == "before_nms":
        assert kept_b and inst.scores[0].item() == pytest.approx((0.8 * p_b) ** 0.5, rel=1e-5)
    elif rescore == "after_nms":
        assert not kept_b
        assert inst.scores[0].item() == pytest.approx((0.9 * p_a) ** 0.5, rel=1e-4)
    else:
        assert not kept_b and inst.scores[0].item() == pytest.approx(0.9, rel=1e-5)


def _teacher_outputs(objectness, boxes, mask_dim=1, grid=(8, 8)):
    from vclr_d2.modeling.head import HeadOutputs

    n = len(boxes)
    return HeadOutputs(
        objectness=torch.logit(torch.tensor(objectness))[None], boxes=torch.tensor(boxes)[None],
        embeddings=torch.zeros(1, n, 4), mask_coeffs=torch.full((1, n, mask_dim), 5.0),
        quality=None, mask_features=torch.ones(1, mask_dim, *grid),
        locations=torch.zeros(n, 2), strides=torch.full((n,), 8.0), level_sizes=[n])


def test_pseudo_labels_keep_confident_uncovered_teacher_detections():
    from types import SimpleNamespace

    from vclr_d2.modeling.criterion import Targets
    from vclr_d2.modeling.postprocess import PostProcessor
    from vclr_d2.modeling.pseudo_labels import TeacherPseudoLabeler

    # teacher detections: one on the ground-truth object (covered), two confident uncovered
    # ones, one uncovered but below the score threshold; all with confident masks
    out = _teacher_outputs([0.95, 0.9, 0.8, 0.3],
                           [[0.0, 0, 16, 16], [32.0, 32, 48, 56], [40.0, 0, 60, 12],
                            [0.0, 40, 20, 60]])
    head = SimpleNamespace(mask_stride=8,
                           mask_logits=lambda c, f: torch.einsum("pm,mhw->phw", c, f))
    gt = Targets(boxes=torch.tensor([[1.0, 1, 16, 15]]), is_gt=torch.tensor([True]),
                 masks=torch.ones(1, 16, 16), has_mask=torch.tensor([True]))
    post = PostProcessor(mask_rescore="none")
    labeler = TeacherPseudoLabeler(score_thresh=0.5, max_per_image=10, target_iou=0.5)
    (t,), num = labeler(out, head, post, [gt], [(64, 64)], (16, 16), 4)
    assert num == 2
    assert t.boxes.tolist() == [[1.0, 1, 16, 15], [32.0, 32, 48, 56], [40.0, 0, 60, 12]]
    assert t.is_gt.tolist() == [True, False, False] and t.has_mask.tolist() == [True] * 3
    # a pseudo-label's mask target is the teacher's mask cut to its box, on the loss grid
    assert t.masks.shape == (3, 16, 16)
    assert t.masks[1].sum().item() == 4 * 6 and t.masks[1, 8:14, 8:12].min().item() == 1.0
    labeler.max_per_image = 1
    (t,), num = labeler(out, head, post, [gt], [(64, 64)], (16, 16), 4)
    assert num == 1 and t.boxes[-1].tolist() == [32.0, 32, 48, 56]  # the best one
    assert not labeler.active(-1) and TeacherPseudoLabeler(start_iter=5).active(5)
    window = TeacherPseudoLabeler(start_iter=5, end_iter=8)
    assert [window.active(i) for i in range(4, 10)] == [False, True, True, True, False, False]
    with pytest.raises(ValueError, match=r"END_ITER=5: .* > START_ITER=5"):
        TeacherPseudoLabeler(start_iter=5, end_iter=5)
    # SCORE_WEIGHT: the pseudo-labels' objectness-loss weight rides along with the targets
    assert t.score_weights is None  # default 1: nothing to weight
    (t,), _ = TeacherPseudoLabeler(score_thresh=0.5, score_weight=0.0)(
        out, head, post, [gt], [(64, 64)], (16, 16), 4)
    assert t.score_weights.tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"SCORE_WEIGHT=1.5: must be in \[0, 1\]"):
        TeacherPseudoLabeler(score_weight=1.5)


def test_pseudo_labels_reach_the_proposal_term_in_training(model_cfg):
    model_cfg.MODEL.VCLR.PSEUDO_LABELS.ENABLED = True
    model_cfg.MODEL.VCLR.PSEUDO_LABELS.SCORE_THRESH = 0.0
    model = build_model(model_cfg).train()
    image, masks = scene()
    x = training_input(image, masks[:1], boxes=SCENE_BOXES[:1])
    plain = build_model(model_cfg).train()
    plain.pseudo_labeler = None
    plain.load_state_dict(model.state_dict())
    assert plain(
        [x])["loss_obj_box_l1"].item() == 0.0  # no proposals, no pseudo-labels: L_obj is empty
    # with pseudo-labels (threshold 0) the untrained teacher's detections become L_obj targets
    assert model([x])["loss_obj_box_l1"].item() > 0.0


@pytest.mark.parametrize("head_levels,frozen", [(["p2", "p3", "p4"], ["p5"]),
                                                 (["p2", "p3", "p4", "p5"], [])])
def test_fpn_levels_the_head_does_not_read_are_frozen(model_cfg, head_levels, frozen):
    model_cfg.MODEL.CONVNEXT.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    model_cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    model_cfg.MODEL.VCLR_HEAD.IN_FEATURES = head_levels
    model_cfg.MODEL.VCLR_HEAD.MASK_IN_FEATURES = ["p2", "p3", "p4"]
    model = build_model(model_cfg).train()
    fixed = sorted({n.split(".")[0] for n, p in model.backbone.named_parameters()
                    if not p.requires_grad})
    assert fixed == [f"fpn_output{lvl[1:]}" for lvl in frozen]
    image, masks = scene()
    sum(model([training_input(image, masks)]).values()).backward()
    # every trainable parameter takes part in the loss (what DistributedDataParallel needs)
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_head_and_criterion_are_chosen_by_registry_name(model_cfg):
    """A class registered under another name replaces the default head / criterion, and an
    unknown name is an error naming the key."""
    from vclr_d2.modeling.criterion import VCLR_CRITERION_REGISTRY, VCLRCriterion
    from vclr_d2.modeling.head import VCLR_HEAD_REGISTRY, VCLRHead

    class TestOnlyHead(VCLRHead):
        pass

    class TestOnlyCriterion(VCLRCriterion):
        pass

    for registry, cls in ((VCLR_HEAD_REGISTRY, TestOnlyHead),
                          (VCLR_CRITERION_REGISTRY, TestOnlyCriterion)):
        if cls.__name__ not in registry:
            registry.register(cls)
    model_cfg.MODEL.VCLR_HEAD.NAME = "TestOnlyHead"
    model_cfg.MODEL.VCLR_LOSS.NAME = "TestOnlyCriterion"
    model = build_model(model_cfg)
    assert type(model.head) is TestOnlyHead
    assert type(model.criterion) is TestOnlyCriterion
    model_cfg.MODEL.VCLR_LOSS.NAME = "NoSuchLoss"
    with pytest.raises(ValueError, match="MODEL.VCLR_LOSS.NAME='NoSuchLoss'"):
        build_model(model_cfg)


def test_view_iters_show_the_student_the_natural_image_outside_the_window(model_cfg):
    """MODEL.VCLR.VIEW_ITERS [2, 4]: at iterations 0-1 and 4+ the student's input is
    image_natural (same losses as a model given the natural image as its view), at 2-3 the
    view; a bad window is refused with the key named."""
    from detectron2.utils.events import EventStorage

    model_cfg.MODEL.VCLR.SIM_ON = False
    model_cfg.MODEL.VCLR.VIEW_ITERS = [2, 4]
    torch.manual_seed(0)
    model = build_model(model_cfg).train()
    image, masks = scene()
    view = 255 - image  # a "view" unlike the natural image
    x = dict(training_input(view, masks, natural=image), view="depth")
    x_nat = training_input(image, masks)
    x_view = training_input(view, masks)

    def loss(inputs, it):
        with EventStorage(start_iter=it):
            return model([inputs])["loss_gt_giou"].item()

    for it, expected in ((0, x_nat), (1, x_nat), (2, x_view), (3, x_view), (4, x_nat),
                         (100, x_nat)):
        assert loss(x, it) == loss(expected, it), it
    assert loss(x_nat, 0) != loss(x_view, 0)  # the two inputs are told apart
    with EventStorage(start_iter=5) as storage:
        model([x])
        assert storage.latest()["vclr/view_natural"][0] == 1.0
        assert "vclr/view_depth" not in storage.latest()
    with EventStorage(start_iter=2) as storage:
        model([x])
        assert storage.latest()["vclr/view_depth"][0] == 1.0
    del x["image_natural"]
    with EventStorage(start_iter=5), pytest.raises(ValueError, match="image_natural"):
        model([x])
    for bad in ([4, 2], [-1, 3], [2]):
        model_cfg.MODEL.VCLR.VIEW_ITERS = bad
        with pytest.raises(ValueError, match="MODEL.VCLR.VIEW_ITERS"):
            build_model(model_cfg)
