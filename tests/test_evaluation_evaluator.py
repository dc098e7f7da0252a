"""OpenWorldEvaluator end to end (reset/process/evaluate) and build_evaluator."""

import json
import logging
import math

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.evaluation.testing import flatten_results_dict, print_csv_format
from detectron2.structures import Boxes, Instances

import vclr_d2.evaluation.evaluator as evaluator_module
from tests.test_evaluation import reference_summary, run_cocoeval
from vclr_d2.evaluation import OpenWorldEvaluator, build_evaluator
from vclr_d2.evaluation.evaluator import RESULTS_FILE

MAX_DETS = (1, 5, 10, 100)


@pytest.fixture
def register(tmp_path):
    """register(name, gt, ...) -> json path; the names are removed again afterwards."""
    names = []

    def _register(name, gt=None, evaluator_type="openworld", loader=None):
        path = tmp_path / f"{name}.json"
        if gt is not None:
            path.write_text(json.dumps(gt))
        DatasetCatalog.register(name, loader or (lambda: []))
        MetadataCatalog.get(name).set(json_file=str(path), evaluator_type=evaluator_type,
                                      thing_classes=["object"])
        names.append(name)
        return str(path)

    yield _register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _mask_case(seed=0, num_images=6, height=120, width=160):
    """GT with masks (RLE, polygons, some crowd) of all sizes; outputs with boxes and masks."""
    rng = np.random.default_rng(seed)
    images, anns, outputs = [], [], {}
    for iid in range(1, num_images + 1):
        images.append({"id": iid, "height": height, "width": width})
        gt_boxes = []
        for _ in range(rng.integers(0 if iid == 2 else 1, 6)):
            w, h = (int(v) for v in np.exp(rng.uniform(np.log(4), np.log([width, height]))))
            x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            gt_boxes.append((x, y, w, h))
            crowd = int(rng.random() < 0.2)
            if crowd or rng.random() < 0.5:
                m = np.zeros((height, width), dtype=np.uint8, order="F")
                m[y:y + h, x:x + w] = 1
                rle = mask_util.encode(m)
                seg = {"size": rle["size"], "counts": rle["counts"].decode()}
            else:  # a triangle: the mask differs from the box
                seg = [[x, y, x + w, y, x + w, y + h]]
            anns.append({"id": len(anns) + 1, "image_id": iid, "iscrowd": crowd,
                         "category_id": int(rng.integers(1, 4)), "bbox": [x, y, w, h],
                         "area": float(w * h), "segmentation": seg})
        n = 0 if iid == 3 else int(rng.integers(1, 13))
        boxes = np.zeros((n, 4), dtype=np.float32)
        masks = np.zeros((n, height, width), dtype=bool)
        for i in range(n):
            if gt_boxes and rng.random() < 0.7:
                x, y, w, h = gt_boxes[rng.integers(len(gt_boxes))]
                x, y = x + int(rng.integers(-2, 3)), y + int(rng.integers(-2, 3))
            else:
                w, h = int(rng.integers(2, 60)), int(rng.integers(2, 60))
                x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            boxes[i] = np.clip([x, y, x + w, y + h], 0, [width, height, width, height])
            x0, y0, x1, y1 = boxes[i].astype(int)
            masks[i, y0:y1, x0:x1] = True
            masks[i, y0:y0 + (y1 - y0) // 3, x0:x0 + (x1 - x0) // 3] = False  # a corner cut
        inst = Instances((height, width))
        inst.pred_boxes = Boxes(torch.from_numpy(boxes))
        inst.scores = torch.from_numpy((rng.integers(1, 6, n) / 5).astype(np.float32))  # ties
        inst.pred_classes = torch.zeros(n, dtype=torch.int64)
        inst.pred_masks = torch.from_numpy(masks)
        outputs[iid] = inst
    cats = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "car"}]
    return {"images": images, "annotations": anns, "categories": cats}, outputs


def _run(evaluator, outputs, image_ids=None, batch=2):
    evaluator.reset()
    ids = sorted(outputs) if image_ids is None else image_ids
    for i in range(0, len(ids), batch):
        chunk = ids[i:i + batch]
        evaluator.process([{"image_id": iid, "file_name": f"{iid}.jpg"} for iid in chunk],
                          [{"instances": outputs[iid]} for iid in chunk])
    return evaluator.evaluate()


def _reference(gt, outputs, image_ids, iou_type, max_dets):
    results = []
    for iid in image_ids:
        for r in instances_to_coco_json(outputs[iid], iid):
            r["category_id"] = 1  # one class: COCOeval orders ties by category
            r.pop("segmentation" if iou_type == "bbox" else "bbox")
            results.append(r)
    return reference_summary(run_cocoeval(gt, results, iou_type, max_dets, image_ids), max_dets)


def _assert_close(ours, expected):
    assert ours.keys() == expected.keys()
    for key, value in expected.items():
        assert isinstance(ours[key], float), key
        if math.isnan(value):
            assert math.isnan(ours[key]), key
        else:
            assert abs(ours[key] - value) <= 1e-9, (key, ours[key], value)


def test_end_to_end_equals_cocoeval(register, tmp_path, caplog):
    gt, outputs = _mask_case()
    register("_vclr_eval_e2e", gt)
    out_dir = tmp_path / "inference"
    evaluator = OpenWorldEvaluator("_vclr_eval_e2e", output_dir=str(out_dir), max_dets=MAX_DETS)
    processed = [1, 2, 3, 4, 5]  # image 6 is not processed, so not evaluated
    with caplog.at_level(logging.INFO, logger=evaluator_module.__name__):
        results = _run(evaluator, outputs, processed)
    assert list(results) == ["bbox", "segm"]
    for task in ("bbox", "segm"):
        _assert_close(results[task], _reference(gt, outputs, processed, task, MAX_DETS))
    assert 0 < results["segm"]["AR@100"] < 100
    assert results["bbox"]["AR@1"] < results["bbox"]["AR@10"]

    saved = json.loads((out_dir / RESULTS_FILE).read_text())
    assert saved["dataset"] == "_vclr_eval_e2e" and saved["num_images"] == 5
    assert saved["results"]["segm"]["AR@10"] == results["segm"]["AR@10"]
    assert "| AR@100 " in caplog.text and "segm" in caplog.text
    # what detectron2's EvalHook and print_csv_format do with the results
    flat = flatten_results_dict(results)
    assert all(isinstance(float(v), float) for v in flat.values())
    assert "bbox/AR@100" in flat
    print_csv_format(results)


def test_truncation_at_the_largest_k_and_empty_outputs(register):
    gt, outputs = _mask_case(seed=3)
    register("_vclr_eval_trunc", gt)
    max_dets = (1, 2, 3)  # most images have more detections than 3
    assert max(len(o) for o in outputs.values()) > 3 and len(outputs[3]) == 0
    results = _run(OpenWorldEvaluator("_vclr_eval_trunc", max_dets=max_dets), outputs)
    for task in ("bbox", "segm"):
        _assert_close(results[task], _reference(gt, outputs, sorted(outputs), task, max_dets))


def _seen_unseen_gt():
    # image 1: a cat (found at IoU 1) and a dog (found at IoU 0.72: thresholds 0.50-0.70);
    # image 2: a car (missed) and a dog (found at IoU 0.92: thresholds 0.50-0.90)
    images = [{"id": i, "height": 100, "width": 100} for i in (1, 2)]
    boxes = {(1, 1): [0, 0, 10, 10], (1, 2): [20, 20, 10, 10],
             (2, 3): [50, 50, 10, 10], (2, 2): [0, 0, 10, 10]}
    anns = [{"id": i + 1, "image_id": img, "category_id": cat, "bbox": box, "area": 100.0,
             "iscrowd": 0} for i, ((img, cat), box) in enumerate(boxes.items())]
    cats = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "car"}]
    return {"images": images, "annotations": anns, "categories": cats}


def _boxes_output(xyxy, scores):
    inst = Instances((100, 100))
    inst.pred_boxes = Boxes(torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.zeros(len(scores), dtype=torch.int64)
    return inst


def test_seen_unseen_breakdown_on_a_hand_made_case(register, tmp_path):
    register("_vclr_eval_split", _seen_unseen_gt())
    outputs = {1: _boxes_output([[0, 0, 10, 10], [20, 20, 30, 27.2]], [0.9, 0.8]),
               2: _boxes_output([[0, 0, 10, 9.2]], [0.7])}
    evaluator = OpenWorldEvaluator("_vclr_eval_split", tasks=("bbox",), max_dets=(1, 100),
                                   known_classes=["cat"], output_dir=str(tmp_path))
    res = _run(evaluator, outputs)["bbox"]
    # 10 thresholds: cat 10/10; dogs 5/10 and 9/10, car 0/10
    assert res["AR@100_seen"] == pytest.approx(100.0, abs=1e-9)
    assert res["AR@100_unseen"] == pytest.approx(100 * 14 / 30, abs=1e-9)
    assert res["AR@100"] == pytest.approx(100 * 24 / 40, abs=1e-9)
    # AR@1: image 1 keeps the cat detection only, image 2 its dog
    assert res["AR@1_seen"] == pytest.approx(100.0, abs=1e-9)
    assert res["AR@1_unseen"] == pytest.approx(100 * 9 / 30, abs=1e-9)
    assert math.isnan(res["AR_large@100_seen"])  # no large objects
    assert "AP_seen" not in res and "AP" in res
    # the recall at each IoU threshold (0.50 ... 0.95) at k = 100, whose mean is AR@100
    by_iou = json.loads((tmp_path / RESULTS_FILE).read_text())["recall_by_iou"]
    assert by_iou["iou_thresholds"] == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    assert by_iou["max_det"] == 100 and list(by_iou) == ["iou_thresholds", "max_det", "bbox"]
    expected = {"seen": [100.0] * 10,  # the cat's box is exact
                # the dogs pass 5 and 9 of the 10 thresholds, the car none
                "unseen": [200 / 3] * 5 + [100 / 3] * 4 + [0.0],
                "all": [75.0] * 5 + [50.0] * 4 + [25.0]}
    for split, values in expected.items():
        assert by_iou["bbox"][split] == pytest.approx(values, abs=1e-9), split
        suffix = {"all": "", "seen": "_seen", "unseen": "_unseen"}[split]
        assert np.mean(by_iou["bbox"][split]) == pytest.approx(res["AR@100" + suffix])


def test_confident_false_detections_are_counted_per_image(register, tmp_path):
    register("_vclr_eval_conf", _seen_unseen_gt())
    # image 1: on the cat (IoU 1), half on the dog (IoU 1/3), on nothing (IoU 0), and one
    # on nothing below the score threshold; image 2: on the dog (IoU 0.92) only
    outputs = {1: _boxes_output([[0, 0, 10, 10], [25, 20, 35, 30], [70, 70, 80, 80],
                                 [80, 0, 90, 10]], [0.9, 0.6, 0.5, 0.4]),
               2: _boxes_output([[0, 0, 10, 9.2]], [0.7])}
    _run(OpenWorldEvaluator("_vclr_eval_conf", tasks=("bbox",), output_dir=str(tmp_path)),
         outputs)
    conf = json.loads((tmp_path / RESULTS_FILE).read_text())["confident_detections"]
    assert conf == {"score_thresh": 0.5, "false_iou": 0.5, "off_object_iou": 0.2,
                    "per_image": 2.0, "false_per_image": 1.0, "off_object_per_image": 0.5}


def test_unknown_known_classes_are_named(register):
    register("_vclr_eval_badcls", _seen_unseen_gt())
    with pytest.raises(ValueError, match=r"\['zebra', 'bus'\]"):
        OpenWorldEvaluator("_vclr_eval_badcls", known_classes=["cat", "zebra", "bus"])


def test_segm_only_with_masks_on_both_sides(register, caplog):
    gt, outputs = _mask_case(seed=1)
    register("_vclr_eval_segm", gt)
    box_only = {}
    for iid, inst in outputs.items():
        box_only[iid] = Instances(inst.image_size, pred_boxes=inst.pred_boxes,
                                  scores=inst.scores, pred_classes=inst.pred_classes)
    with caplog.at_level(logging.WARNING, logger=evaluator_module.__name__):
        results = _run(OpenWorldEvaluator("_vclr_eval_segm"), box_only)
    assert list(results) == ["bbox"] and "no pred_masks" in caplog.text
    results = _run(OpenWorldEvaluator("_vclr_eval_segm", tasks=("bbox",)), outputs)
    assert list(results) == ["bbox"]

    for ann in gt["annotations"][::2]:
        del ann["segmentation"]
    register("_vclr_eval_nosegm", gt)
    with caplog.at_level(logging.WARNING, logger=evaluator_module.__name__):
        results = _run(OpenWorldEvaluator("_vclr_eval_nosegm"), outputs)
    assert list(results) == ["bbox"] and "without segmentation" in caplog.text


def test_distributed_gathers_and_only_the_main_process_evaluates(register, monkeypatch,
                                                                  caplog):
    gt, outputs = _mask_case(seed=2)
    register("_vclr_eval_dist", gt)
    expected = _run(OpenWorldEvaluator("_vclr_eval_dist", distributed=False), outputs)

    class FakeComm:
        def __init__(self, rank, others=()):
            self.rank, self.others, self.sent = rank, list(others), None

        def synchronize(self):
            pass

        def is_main_process(self):
            return self.rank == 0

        def gather(self, data, dst=0):
            self.sent = data
            return [data] + self.others if self.rank == dst else []

    worker = FakeComm(rank=1)
    monkeypatch.setattr(evaluator_module, "comm", worker)
    with caplog.at_level(logging.INFO, logger=evaluator_module.__name__):
        assert _run(OpenWorldEvaluator("_vclr_eval_dist"), outputs, [2, 4, 6]) == {}
    assert caplog.text == ""  # returned before evaluating or warning
    assert [p["image_id"] for p in worker.sent] == [2, 4, 6]
    monkeypatch.setattr(evaluator_module, "comm", FakeComm(rank=0, others=[worker.sent]))
    results = _run(OpenWorldEvaluator("_vclr_eval_dist"), outputs, [1, 3, 5])
    assert results.keys() == expected.keys()
    for task in expected:
        _assert_close(results[task], expected[task])


def test_ground_truth_file_is_created_on_first_load_or_missing(register, tmp_path):
    gt = _seen_unseen_gt()
    calls = []

    def lazy():
        calls.append(1)
        (tmp_path / "_vclr_eval_lazy.json").write_text(json.dumps(gt))
        return []

    register("_vclr_eval_lazy", loader=lazy)
    evaluator = OpenWorldEvaluator("_vclr_eval_lazy", tasks=("bbox",), max_dets=(1, 100))
    assert calls == [1]
    outputs = {1: _boxes_output([[0, 0, 10, 10]], [1.0]), 2: _boxes_output([], [])}
    assert _run(evaluator, outputs)["bbox"]["AR@100"] == pytest.approx(25.0, abs=1e-9)

    calls.clear()
    path = register("_vclr_eval_missing", loader=lambda: calls.append(1) or [])
    with pytest.raises(FileNotFoundError, match=f"'_vclr_eval_missing'.*{path}"):
        OpenWorldEvaluator("_vclr_eval_missing")
    assert calls == [1]


def test_bad_inputs_raise(register):
    register("_vclr_eval_bad", _seen_unseen_gt())
    evaluator = OpenWorldEvaluator("_vclr_eval_bad")
    evaluator.reset()
    with pytest.raises(KeyError, match="'image_id'"):
        evaluator.process([{"file_name": "x.jpg"}], [{"instances": _boxes_output([], [])}])
    with pytest.raises(KeyError, match="'instances'"):
        evaluator.process([{"image_id": 1}], [{"proposals": None}])
    with pytest.raises(ValueError, match="tasks"):
        OpenWorldEvaluator("_vclr_eval_bad", tasks=("keypoints",))
    assert evaluator.evaluate() == {}  # nothing processed


def test_build_evaluator_chooses_by_evaluator_type(register, cfg):
    gt = _seen_unseen_gt()
    register("_vclr_eval_ow", gt)
    cfg.TEST.OPENWORLD.MAX_DETS = [10, 1, 100]
    cfg.MODEL.MASK_ON = False
    ev = build_evaluator(cfg, "_vclr_eval_ow", None)
    assert isinstance(ev, OpenWorldEvaluator)
    assert ev.tasks == ("bbox",) and ev.max_dets == (1, 10, 100) and ev.known_classes == []
    cfg.MODEL.MASK_ON = True
    cfg.TEST.OPENWORLD.KNOWN_CLASSES = ["dog"]
    ev = build_evaluator(cfg, "_vclr_eval_ow", None)
    assert ev.tasks == ("bbox", "segm") and ev.known_classes == ["dog"]

    register("_vclr_eval_coco", gt, evaluator_type="coco")
    assert isinstance(build_evaluator(cfg, "_vclr_eval_coco", None), COCOEvaluator)

    register("_vclr_eval_sem", gt, evaluator_type="sem_seg")
    with pytest.raises(NotImplementedError, match="'_vclr_eval_sem'.*'sem_seg'"):
        build_evaluator(cfg, "_vclr_eval_sem", None)


def test_soft_masks_are_cut_at_one_half(register):
    gt, outputs = _mask_case(seed=4)
    register("_vclr_eval_soft", gt)
    soft = {}
    for iid, inst in outputs.items():
        soft[iid] = Instances(inst.image_size, pred_boxes=inst.pred_boxes, scores=inst.scores,
                              pred_classes=inst.pred_classes,
                              pred_masks=inst.pred_masks.float() * 0.5 + 0.25)  # 0.75 / 0.25
    expected = _run(OpenWorldEvaluator("_vclr_eval_soft", tasks=("segm",)), outputs)
    assert expected["segm"]["AR@100"] > 0
    results = _run(OpenWorldEvaluator("_vclr_eval_soft", tasks=("segm",)), soft)
    assert list(results) == ["segm"]
    _assert_close(results["segm"], expected["segm"])
