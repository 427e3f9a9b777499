"""What each suite model's users care about, measured on a quantized model's outputs against float.

All functions take ``(reference, outputs)`` arrays of the same shape with the
samples on axis 0.

* classifiers: top-1 agreement and mean logit cosine;
* every output: mean per-sample cosine and SNR in dB (signal = float output);
* detectors: agreement of the top-10 anchors by score (share of the float
  model's 10 best anchors that are also among the quantized model's 10 best).
  A quantized score output has a step (about 1 logit for BlazeFace's
  [-265, 2] output at 8 bits), so several anchors often tie for the last
  places; a tied anchor counts with the chance that a random tie-break keeps
  it (``argpartition`` picked by index instead, which made the number
  noise). Also the anchors a detector would report: IoU of the sets of
  anchors scoring above 0.5 after the sigmoid (both empty: 1);
* segmentation: IoU of the masks thresholded at 0.5 (two empty masks: 1);
* landmarks: mean Euclidean error in pixels over the (x, y) of the 21 hand
  landmarks (the model's 63 = 21 x (x, y, z) output is in input-pixel units).
"""
from __future__ import annotations

import numpy as np

from eq_tflite.metrics import mean_cosine


def _flat(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float64).reshape(len(a), -1)


def top1_agreement(reference: np.ndarray, outputs: np.ndarray) -> float:
    """Share of samples whose arg-max class is the float model's."""
    return float(np.mean(_flat(reference).argmax(1) == _flat(outputs).argmax(1)))


def cosine(reference: np.ndarray, outputs: np.ndarray) -> float:
    """Mean over samples of the cosine between the flattened outputs."""
    return mean_cosine(_flat(reference), _flat(outputs))


def snr_db(reference: np.ndarray, outputs: np.ndarray) -> float:
    """10 log10(sum ref^2 / sum (ref - out)^2) over all samples; inf when identical."""
    ref, out = _flat(reference), _flat(outputs)
    noise = float(np.sum((ref - out) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0.0:
        return float("inf")
    return float(10.0 * np.log10(signal / noise)) if signal > 0 else float("-inf")


def topk_anchor_agreement(reference_scores: np.ndarray, scores: np.ndarray, k: int = 10) -> float:
    """Mean over samples of |top-k(float) & top-k(quantized)| / k, anchors ranked by score."""
    ref, out = _flat(reference_scores), _flat(scores)
    if ref.shape[1] < k:
        raise ValueError(f"{ref.shape[1]} anchors, fewer than k={k}")
    total = 0.0
    for r, o in zip(ref, out):
        top_ref = np.argsort(-r, kind="stable")[:k]   # float scores: ties are measure-zero
        kth = np.sort(o)[-k]
        above, tied = o > kth, o == kth
        # every anchor above the k-th score is kept; the tied ones share the remaining places
        p_tied = (k - above.sum()) / tied.sum()
        total += float(np.sum(np.where(above[top_ref], 1.0, np.where(tied[top_ref], p_tied, 0.0)))) / k
    return total / len(ref)


def detection_iou(reference_scores: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> float:
    """Mean over samples of the IoU of the anchor sets whose sigmoid score exceeds ``threshold``."""
    logit = float(np.log(threshold / (1.0 - threshold)))
    return mask_iou(_flat(reference_scores) > logit, _flat(scores) > logit, threshold=0.5)


def mask_iou(reference: np.ndarray, outputs: np.ndarray, threshold: float = 0.5) -> float:
    """Mean over samples of the IoU of ``> threshold`` masks (1 when both masks are empty)."""
    a, b = _flat(reference) > threshold, _flat(outputs) > threshold
    inter, union = (a & b).sum(1), (a | b).sum(1)
    return float(np.mean(np.where(union == 0, 1.0, inter / np.maximum(union, 1))))


def landmark_error_px(reference: np.ndarray, outputs: np.ndarray, dims: int = 3) -> float:
    """Mean Euclidean (x, y) distance in pixels between matching landmarks."""
    ref = _flat(reference).reshape(len(reference), -1, dims)[..., :2]
    out = _flat(outputs).reshape(len(outputs), -1, dims)[..., :2]
    return float(np.mean(np.linalg.norm(ref - out, axis=-1)))


def score_outputs(kind: str, names: list[str], reference: list[np.ndarray],
                  outputs: list[np.ndarray]) -> dict:
    """Every metric that applies to a model of ``kind`` (classifier, detector, segmentation, landmarks)."""
    row: dict = {"outputs": {}}
    for name, ref, out in zip(names, reference, outputs):
        row["outputs"][name] = {"cosine": cosine(ref, out), "snr_db": snr_db(ref, out)}
    if kind == "classifier":
        row["agreement"] = top1_agreement(reference[0], outputs[0])
        row["cosine"] = cosine(reference[0], outputs[0])
    elif kind == "detector":
        # the score output is the one with one value per anchor: (1, anchors, 1)
        i = next(j for j, r in enumerate(reference) if r.ndim == 3 and r.shape[-1] == 1)
        row["top10_anchors"] = topk_anchor_agreement(reference[i], outputs[i], 10)
        row["detection_iou"] = detection_iou(reference[i], outputs[i])
    elif kind == "segmentation":
        row["mask_iou"] = mask_iou(reference[0], outputs[0])
    elif kind == "landmarks":
        # the first 63-wide output: screen landmarks in input pixels (the other is world metres)
        i = next(j for j, r in enumerate(reference) if _flat(r).shape[1] == 63)
        row["landmark_px"] = landmark_error_px(reference[i], outputs[i])
    return row
