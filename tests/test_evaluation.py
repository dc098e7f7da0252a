"""The vectorised open-world engine against pycocotools' COCOeval (useCats = 0), case by case.

Random cases are seeded; each compares the whole recall (T, A, M) and precision (T, R, A, M)
arrays and every summary number with COCOeval's, within 1e-9.
"""

import contextlib
import copy
import io
import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vclr_d2.evaluation import CocoGroundTruth, Detections, OpenWorldRecall, summarize
from vclr_d2.evaluation.recall import RECALL_THRESHOLDS, check_max_dets

MAX_DETS_CHOICES = [(1, 10, 100), (1, 2, 5), (3,), (1, 10, 20, 30, 50, 100, 300), (2, 4)]
CATEGORY_IDS = [3, 1, 7]
NUM_BOX_CASES = 180
NUM_MASK_CASES = 60


# --------------------------------------------------------------------------- random cases
def _uncompressed_rle(mask):
    """COCO's uncompressed RLE (run lengths in column-major order, starting with zeros)."""
    flat = mask.flatten(order="F")
    edges = np.r_[0, np.flatnonzero(flat[1:] != flat[:-1]) + 1, len(flat)]
    runs = np.diff(edges)
    if flat[0]:
        runs = np.r_[0, runs]
    return {"counts": [int(r) for r in runs], "size": list(mask.shape)}


def _random_mask(rng, h, w, like=None):
    if like is not None:  # a shifted copy of another mask
        dy, dx = rng.integers(-1, 2, 2)
        return np.roll(np.roll(like, dy, axis=0), dx, axis=1)
    mask = np.zeros((h, w), dtype=bool)
    for _ in range(rng.integers(1, 3)):
        y, x = rng.integers(0, h), rng.integers(0, w)
        mask[y:y + rng.integers(1, h + 1), x:x + rng.integers(1, w + 1)] = True
    return mask


def random_case(seed, masks):
    """A random evaluation problem: (gt dict, COCO results, max_dets, img_ids, category_ids)."""
    rng = np.random.default_rng(seed + (10_000 if masks else 0))
    cats = [{"id": int(c), "name": f"class{c}"} for c in rng.permutation(CATEGORY_IDS)]
    images, anns, results, gt_masks = [], [], [], {}
    image_ids = rng.choice(np.arange(1, 60), size=rng.integers(1, 6), replace=False)
    for iid in (int(i) for i in image_ids):
        h, w = (int(rng.integers(6, 31)), int(rng.integers(6, 31))) if masks else (300, 300)
        images.append({"id": iid, "height": h, "width": w, "file_name": f"{iid}.jpg"})
        gt_masks[iid] = []
        for _ in range(rng.integers(0, 7)):
            crowd = int(rng.random() < 0.2)
            ann = {"id": len(anns) + 1, "image_id": iid, "iscrowd": crowd,
                   "category_id": int(rng.choice(CATEGORY_IDS))}
            if masks:
                u = rng.random()
                if gt_masks[iid] and u < 0.35:  # a duplicate or shifted copy: equal IoUs
                    m = np.roll(gt_masks[iid][-1], int(u < 0.2) * 2, axis=int(rng.integers(2)))
                else:
                    m = _random_mask(rng, h, w)
                gt_masks[iid].append(m)
                kind = rng.integers(0, 3)
                if crowd or kind == 0:
                    ann["segmentation"] = _uncompressed_rle(m)
                elif kind == 1:
                    rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
                    ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
                else:  # a polygon (its own shape, not m)
                    pts = rng.uniform(0, [w, h], size=(int(rng.integers(3, 6)), 2))
                    ann["segmentation"] = [pts.ravel().round(1).tolist()]
                ann["bbox"] = [0.0, 0.0, 1.0, 1.0]
                area_choices = [float(m.sum()), rng.uniform(0, 12000), 1024.0, 9216.0]
            else:
                u = rng.random()
                if anns and anns[-1]["image_id"] == iid and u < 0.35:
                    # a duplicate or a shifted copy of the previous box: equal IoUs to break
                    box = list(anns[-1]["bbox"])
                    box[int(rng.integers(2))] += float(rng.integers(2, 7)) * (u < 0.2)
                else:
                    box = [float(v) for v in
                           np.r_[rng.integers(0, 200, 2), rng.integers(1, 130, 2)]]
                ann["bbox"] = box
                area_choices = [box[2] * box[3], rng.uniform(0, 12000), 1024.0, 9216.0, 0.0]
            ann["area"] = float(rng.choice(area_choices))
            anns.append(ann)
        for _ in range(rng.integers(0, 13)):
            score = float(rng.integers(1, 6)) / 10  # few values: score ties
            res = {"image_id": iid, "category_id": CATEGORY_IDS[0], "score": score}
            own = [a for a in anns if a["image_id"] == iid]
            near = own and rng.random() < 0.6
            if masks:
                like = gt_masks[iid][rng.integers(len(own))] if near else None
                m = _random_mask(rng, h, w, like)
                res["segmentation"] = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
            elif near:
                base = np.array(own[rng.integers(len(own))]["bbox"])
                res["bbox"] = (base + rng.integers(-4, 5, 4) * (rng.random() < 0.7)).clip(
                    [0, 0, 1, 1], None).tolist()
            else:
                res["bbox"] = [float(v) for v in
                               np.r_[rng.integers(0, 200, 2), rng.integers(1, 130, 2)]]
            results.append(res)
    if rng.random() < 0.05:
        results = []
    gt = {"images": images, "annotations": anns, "categories": cats}
    max_dets = MAX_DETS_CHOICES[int(rng.integers(len(MAX_DETS_CHOICES)))]
    img_ids = None
    if rng.random() < 0.25:
        img_ids = sorted(int(i) for i in rng.choice(image_ids, rng.integers(1, len(image_ids) + 1),
                                                    replace=False))
    category_ids = None
    if rng.random() < 0.25:
        category_ids = sorted(int(c) for c in rng.choice(CATEGORY_IDS, rng.integers(1, 3),
                                                         replace=False))
    return gt, results, max_dets, img_ids, category_ids


# --------------------------------------------------------------------------- COCOeval oracle
def run_cocoeval(gt, results, iou_type, max_dets, img_ids=None, category_ids=None):
    """COCOeval (useCats = 0) on copies; ``category_ids`` drops the other ground truth."""
    gt = copy.deepcopy(gt)
    if category_ids is not None:
        gt["annotations"] = [a for a in gt["annotations"] if a["category_id"] in category_ids]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        else:  # loadRes cannot take an empty list
            coco_dt = COCO()
            coco_dt.dataset = {"images": gt["images"], "categories": gt["categories"],
                               "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.useCats = 0
        ev.params.maxDets = list(max_dets)
        if img_ids is not None:
            ev.params.imgIds = list(img_ids)
        ev.evaluate()
        ev.accumulate()
    return ev


def reference_summary(ev, max_dets):
    """Our summary keys computed from COCOeval's arrays with COCOeval's _summarize rule."""
    recall, precision = ev.eval["recall"][:, 0], ev.eval["precision"][:, :, 0]
    labels = ev.params.areaRngLbl

    def mean(s):
        s = s[s > -1]
        return float(np.mean(s)) * 100 if s.size else float("nan")

    out = {f"AR@{k}": mean(recall[:, 0, m]) for m, k in enumerate(max_dets)}
    for a in range(1, len(labels)):
        for k in sorted({k for k in (100, max_dets[-1]) if k in max_dets}):
            out[f"AR_{labels[a]}@{k}"] = mean(recall[:, a, max_dets.index(k)])
    m = max_dets.index(100 if 100 in max_dets else max_dets[-1])
    out["AP"] = mean(precision[:, :, 0, m])
    out["AP50"] = mean(precision[0, :, 0, m])
    return out


def assert_same(ours, ev, max_dets):
    np.testing.assert_allclose(ours.recall, ev.eval["recall"][:, 0], rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours.precision, ev.eval["precision"][:, :, 0], rtol=0, atol=1e-9)
    summary = summarize(ours)
    expected = reference_summary(ev, max_dets)
    assert summary.keys() == expected.keys()
    for key, value in expected.items():
        if np.isnan(value):
            assert np.isnan(summary[key]), key
        else:
            assert abs(summary[key] - value) <= 1e-9, (key, summary[key], value)
    if tuple(max_dets) == (1, 10, 100):  # COCOeval.summarize itself is valid for these k
        with contextlib.redirect_stdout(io.StringIO()):
            ev.summarize()
        pairs = {"AP": 0, "AP50": 1, "AR@1": 6, "AR@10": 7, "AR@100": 8, "AR_small@100": 9,
                 "AR_medium@100": 10, "AR_large@100": 11}
        for key, i in pairs.items():
            stat = ev.stats[i]
            assert (np.isnan(summary[key]) and stat == -1) or abs(summary[key] - 100 * stat) <= 1e-9


def _check_case(seed, masks):
    gt, results, max_dets, img_ids, category_ids = random_case(seed, masks)
    iou_type = "segm" if masks else "bbox"
    ev = run_cocoeval(gt, results, iou_type, max_dets, img_ids, category_ids)
    engine = OpenWorldRecall(gt, results, iou_type, max_dets=max_dets, img_ids=img_ids)
    assert_same(engine.evaluate(category_ids), ev, max_dets)


@pytest.mark.parametrize("seed", range(NUM_BOX_CASES))
def test_boxes_equal_cocoeval(seed):
    _check_case(seed, masks=False)


@pytest.mark.parametrize("seed", range(NUM_MASK_CASES))
def test_masks_equal_cocoeval(seed):
    _check_case(seed, masks=True)


def test_random_cases_cover_the_edge_cases():
    """The seeds above do exercise every situation the comparison is meant to cover."""
    seen = dict.fromkeys(
        ["crowd", "image_without_gt", "gt_without_dets", "score_tie", "truncated", "no_dets",
         "small", "medium", "large", "area_on_boundary", "img_subset", "category_subset",
         "polygon", "uncompressed_rle", "det_outside_range", "mask_case_truncated"], 0)
    for masks, n in ((False, NUM_BOX_CASES), (True, NUM_MASK_CASES)):
        for seed in range(n):
            gt, results, max_dets, img_ids, category_ids = random_case(seed, masks)
            seen["no_dets"] += not results
            seen["img_subset"] += img_ids is not None
            seen["category_subset"] += category_ids is not None
            for img in gt["images"]:
                own = [a for a in gt["annotations"] if a["image_id"] == img["id"]]
                dets = [r for r in results if r["image_id"] == img["id"]]
                seen["image_without_gt"] += not own
                seen["gt_without_dets"] += bool(own) and not dets
                scores = [r["score"] for r in dets]
                seen["score_tie"] += len(set(scores)) < len(scores)
                seen["truncated"] += len(dets) > max(max_dets)
                seen["mask_case_truncated"] += masks and len(dets) > max(max_dets)
                for a in own:
                    seen["crowd"] += a["iscrowd"]
                    if not a["iscrowd"]:
                        seen["small"] += a["area"] < 32 ** 2
                        seen["medium"] += 32 ** 2 < a["area"] < 96 ** 2
                        seen["large"] += a["area"] > 96 ** 2
                    seen["area_on_boundary"] += a["area"] in (1024.0, 9216.0)
                    seg = a.get("segmentation")
                    seen["polygon"] += isinstance(seg, list)
                    seen["uncompressed_rle"] += isinstance(seg, dict) and isinstance(
                        seg["counts"], list)
                for r in dets:
                    area = r["bbox"][2] * r["bbox"][3] if "bbox" in r else 0
                    seen["det_outside_range"] += area > 96 ** 2
    assert all(v > 0 for v in seen.values()), seen


# --------------------------------------------------------------------------- hand-made cases
def _gt(anns, images=({"id": 1, "height": 100, "width": 100},), cats=("a", "b")):
    out = []
    for i, a in enumerate(anns):
        box = a["bbox"]
        out.append({"id": i + 1, "image_id": 1, "category_id": 1, "area": box[2] * box[3],
                    "iscrowd": 0, **a})
    return {"images": list(images), "annotations": out,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(cats)]}


def test_hand_made_recall_and_crowd():
    # GT 1 found at IoU 0.72 (thresholds 0.50..0.70: 5 of 10), GT 2 missed; a detection on the
    # crowd region is ignored, not a false positive
    gt = _gt([{"bbox": [0, 0, 10, 10]}, {"bbox": [50, 50, 10, 10]},
              {"bbox": [20, 20, 30, 30], "iscrowd": 1}])
    dets = [{"image_id": 1, "score": 0.9, "bbox": [0, 0, 10, 7.2]},
            {"image_id": 1, "score": 0.8, "bbox": [25, 25, 5, 5]}]
    arrays = OpenWorldRecall(gt, dets, max_dets=(1, 10)).evaluate()
    np.testing.assert_array_equal(arrays.recall[:, 0, 1], [0.5] * 5 + [0.0] * 5)
    assert summarize(arrays)["AR@10"] == pytest.approx(25.0, abs=1e-12)
    # precision 1 up to recall 0.5 at the thresholds that match: the crowd detection costs nothing
    expected = np.where(RECALL_THRESHOLDS <= 0.5, 1 / (1 + np.spacing(1)), 0.0)
    np.testing.assert_array_equal(arrays.precision[0, :, 0, 1], expected)


@pytest.mark.parametrize("categories, expected", [((1, 1), 55.0), ((2, 1), 35.0)])
def test_equal_iou_goes_to_the_later_ground_truth_in_cocoeval_order(categories, expected):
    # the first detection has IoU 2/3 with both A and B; it takes the later of the two in
    # COCOeval's order (by category id, then file order). Taking B leaves A for the second
    # detection (IoU 0.82; B would be 0.33).
    gt = _gt([{"bbox": [8, 0, 10, 10], "category_id": categories[0]},
              {"bbox": [12, 0, 10, 10], "category_id": categories[1]}])
    dets = [{"image_id": 1, "category_id": 1, "score": 0.9, "bbox": [10, 0, 10, 10]},
            {"image_id": 1, "category_id": 1, "score": 0.8, "bbox": [7, 0, 10, 10]}]
    arrays = OpenWorldRecall(gt, dets, max_dets=(1, 10, 100)).evaluate()
    assert summarize(arrays)["AR@10"] == pytest.approx(expected, abs=1e-12)
    assert_same(arrays, run_cocoeval(gt, dets, "bbox", (1, 10, 100)), (1, 10, 100))


def test_ground_truth_id_zero_is_matched():
    """COCOeval would count this detection unmatched (its 0 means "no match"); we do not."""
    gt = _gt([{"bbox": [0, 0, 10, 10], "id": 0}])
    arrays = OpenWorldRecall(gt, [{"image_id": 1, "score": 1.0, "bbox": [0, 0, 10, 10]}],
                             max_dets=(1,)).evaluate()
    assert summarize(arrays)["AR@1"] == 100.0


def test_no_detections_gives_zero_recall_and_nan_without_gt():
    gt = _gt([{"bbox": [0, 0, 10, 10]}])
    summary = summarize(OpenWorldRecall(gt, Detections(np.zeros(0), np.zeros(0), np.zeros((0, 4))),
                                        max_dets=(1, 100)).evaluate())
    assert summary["AR@1"] == 0.0 and summary["AR@100"] == 0.0 and summary["AP"] == 0.0
    assert np.isnan(summary["AR_medium@100"]) and np.isnan(summary["AR_large@100"])
    assert summary["AR_small@100"] == 0.0


def test_engine_rejects_bad_input():
    gt = _gt([{"bbox": [0, 0, 10, 10]}])
    with pytest.raises(ValueError, match="image id 5"):
        OpenWorldRecall(gt, [{"image_id": 5, "score": 1.0, "bbox": [0, 0, 1, 1]}])
    with pytest.raises(KeyError, match="'score'"):
        OpenWorldRecall(gt, [{"image_id": 1, "bbox": [0, 0, 1, 1]}])
    with pytest.raises(ValueError, match="needs detection masks"):
        OpenWorldRecall(gt, [{"image_id": 1, "score": 1.0, "bbox": [0, 0, 1, 1]}], "segm")
    rle = mask_util.encode(np.ones((4, 4, 1), dtype=np.uint8, order="F"))[0]
    gt["annotations"][0]["segmentation"] = rle
    with pytest.raises(ValueError, match=r"size \[4, 4\].*is \[100, 100\]"):
        OpenWorldRecall(gt, [{"image_id": 1, "score": 1.0, "segmentation": rle}], "segm")
    with pytest.raises(ValueError, match="iou_type"):
        OpenWorldRecall(gt, [], "keypoints")
    for bad in ([], [0, 10], [10, 10], [1.5]):
        with pytest.raises(ValueError, match="max_dets"):
            check_max_dets(bad)
    assert check_max_dets([100, 1, 10]) == (1, 10, 100)


def test_ground_truth_errors_name_the_file_and_key(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        CocoGroundTruth.from_json(str(path))
    with pytest.raises(FileNotFoundError, match="absent.json"):
        CocoGroundTruth.from_json(str(tmp_path / "absent.json"))
    path.write_text(json.dumps({"annotations": [], "categories": []}))
    with pytest.raises(ValueError, match="broken.json: .*'images'"):
        CocoGroundTruth.from_json(str(path))
    gt = _gt([{"bbox": [0, 0, 10, 10]}])
    del gt["annotations"][0]["area"]
    path.write_text(json.dumps(gt))
    with pytest.raises(ValueError, match="broken.json: annotation 1 is malformed.*'area'"):
        CocoGroundTruth.from_json(str(path))
    gt = _gt([{"bbox": [0, 0, 10, 10], "category_id": 9}])
    with pytest.raises(ValueError, match="category_id 9"):
        CocoGroundTruth(gt)
    gt = _gt([{"bbox": [0, 0, 10, 10], "image_id": 4}])
    with pytest.raises(ValueError, match="image id 4"):
        CocoGroundTruth(gt)


def test_ground_truth_order_and_class_lookup():
    gt = CocoGroundTruth(_gt(
        [{"bbox": [0, 0, 1, 1], "category_id": 2}, {"bbox": [0, 0, 2, 2], "category_id": 1},
         {"bbox": [0, 0, 3, 3], "category_id": 2, "image_id": 0}],
        images=({"id": 1}, {"id": 0}), cats=("a", "b")))
    # image id, then category id, then file order
    np.testing.assert_array_equal(gt.ann_ids, [3, 2, 1])
    np.testing.assert_array_equal(gt.offsets, [0, 1, 3])
    np.testing.assert_array_equal(gt.category_ids_of(["b"]), [2])
    with pytest.raises(ValueError, match=r"\['zebra', 'yak'\]"):
        gt.category_ids_of(["a", "zebra", "yak"])


def test_masks_with_more_than_255_detections_per_image():
    """pycocotools.mask.area fails on lists longer than 255 under NumPy 2; we must not."""
    rng = np.random.default_rng(0)
    gt = _gt([{"bbox": [0, 0, 4, 4], "area": 16.0,
               "segmentation": _uncompressed_rle(_random_mask(rng, 8, 8))} for _ in range(3)],
             images=({"id": 1, "height": 8, "width": 8},))
    masks = np.asfortranarray(np.stack([_random_mask(rng, 8, 8) for _ in range(300)], axis=2))
    dets = [{"image_id": 1, "category_id": 1, "score": float(rng.integers(1, 9)) / 8,
             "segmentation": rle} for rle in mask_util.encode(masks.astype(np.uint8))]
    ours = OpenWorldRecall(gt, dets, "segm", max_dets=(1, 10, 300)).evaluate()
    assert_same(ours, run_cocoeval(gt, dets, "segm", (1, 10, 300)), (1, 10, 300))
