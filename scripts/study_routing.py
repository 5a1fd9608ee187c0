#!/usr/bin/env python3
"""Feasibility study for the decision network (issue 9): how well do pooled features of the
small network's encoder predict the small network's per-image quality (IoU_img) and the gain
of the large network, across data sets, and how well does routing on those predictions do
against the small network's own confidence, random routing and the oracle?

Per image it computes, with onnxruntime on CPU:
  - the small network's confusion matrix against ground truth (stretch to 257, argmax,
    nearest resize to the image), and the large fp32 network's (pad to 513, as DeepLab);
  - SPP vectors (1x1 + 2x2 bins, max and average) of the encoder's 160x33x33 features, and of
    the encoder run on a 129x129 downscaled frame (160x17x17);
  - the small network's confidence: mean max-softmax and mean entropy over its 257x257 logits,
    and the fraction of pixels per predicted class.
These are cached in out/study_routing/<set>.npz (delete to recompute).

Then it trains small regressors (ridge, and an MLP like the decision network's head) on one
group of sets and tests on another, for several targets (per-class IoU, IoU_img, gain), and
reports: MAE and Pearson correlation of predicted vs true IoU_img / gain, and the normalised
AUC of hybrid mIoU against remote fraction,
    (AUC_policy - AUC_random) / (AUC_oracle - AUC_random),
where hybrid mIoU sums confusion matrices (small's for local frames, large's for remote),
frames go remote in order of the policy's score and the oracle orders by true gain.

Usage: scripts/study_routing.py [--assets DIR] [--out out/study_routing]
Needs numpy, onnxruntime, Pillow and scikit-learn (pip install pillow scikit-learn): a study
tool, not used by edgeseg at run time. Needs models/derived/small_encoder.onnx and
small_head.onnx (scripts/split_small.py).
"""

import argparse
import itertools
import os
import sys
import time

import numpy as np

CLASSES = 21
VOID = 255
SETS = {
    # name: (folder, id list)
    "camvid_train": ("camvid_voc", "train.txt"),
    "camvid_val": ("camvid_voc", "val.txt"),
    "coco_voc20": ("coco_voc20", "val.txt"),
    "voc": ("voc", "val.txt"),
}


# ----------------------------------------------------------------------------- features


def spp(features, pool):
    """Two-level spatial pyramid pooling of [C,h,w]: the 1x1 bin, then the 2x2 bins (row-major),
    bin edges floor(i*h/n)..ceil((i+1)*h/n) as in SPP-net; returns C*5 values, level by level."""
    c, h, w = features.shape
    reduce = np.max if pool == "max" else np.mean
    out = [reduce(features, axis=(1, 2))]
    for by in range(2):
        for bx in range(2):
            y0, y1 = (by * h) // 2, -(-((by + 1) * h) // 2)
            x0, x1 = (bx * w) // 2, -(-((bx + 1) * w) // 2)
            out.append(reduce(features[:, y0:y1, x0:x1], axis=(1, 2)))
    return np.concatenate(out).astype(np.float32)


def confusion(gt, pred):
    """21x21 confusion matrix (rows ground truth, columns prediction), void ignored."""
    valid = gt != VOID
    idx = gt[valid].astype(np.int64) * CLASSES + pred[valid].astype(np.int64)
    return np.bincount(idx, minlength=CLASSES * CLASSES).reshape(CLASSES, CLASSES)


def nearest_resize(classes, width, height):
    from PIL import Image

    return np.asarray(Image.fromarray(classes.astype(np.uint8)).resize((width, height), Image.NEAREST))


def compute_set(name, assets, sessions, cache_dir):
    from PIL import Image

    path = os.path.join(cache_dir, f"{name}.npz")
    if os.path.isfile(path):
        return dict(np.load(path))
    folder, list_file = SETS[name]
    root = os.path.join(assets, folder)
    ids = [line.strip() for line in open(os.path.join(root, list_file)) if line.strip()]
    encoder, head, large = sessions
    rows = {k: [] for k in ("conf_small", "conf_large", "spp_max", "spp_avg", "spp129_max", "spp129_avg", "maxprob", "entropy", "hist")}
    start = time.time()
    for i, image_id in enumerate(ids):
        image = Image.open(os.path.join(root, "JPEGImages", image_id + ".jpg")).convert("RGB")
        gt = np.asarray(Image.open(os.path.join(root, "SegmentationClass", image_id + ".png")))
        width, height = image.size
        # Small: stretch to 257 (PIL bilinear), [-1, 1].
        x = ((np.asarray(image.resize((257, 257), Image.BILINEAR), np.float32) - 127.5) / 127.5)[None]
        features = encoder.run(["features"], {"input": x})[0]
        logits = head.run(["logits"], {"features": features})[0][0]
        pred = nearest_resize(logits.argmax(0), width, height)
        rows["conf_small"].append(confusion(gt, pred))
        e = np.exp(logits - logits.max(0, keepdims=True))
        p = e / e.sum(0, keepdims=True)
        rows["maxprob"].append(p.max(0).mean())
        rows["entropy"].append((-(p * np.log(np.maximum(p, 1e-12))).sum(0)).mean())
        rows["hist"].append(np.bincount(logits.argmax(0).ravel(), minlength=CLASSES) / (257 * 257))
        rows["spp_max"].append(spp(features[0], "max"))
        rows["spp_avg"].append(spp(features[0], "avg"))
        x129 = ((np.asarray(image.resize((129, 129), Image.BILINEAR), np.float32) - 127.5) / 127.5)[None]
        f129 = encoder.run(["features"], {"input": x129})[0][0]
        rows["spp129_max"].append(spp(f129, "max"))
        rows["spp129_avg"].append(spp(f129, "avg"))
        # Large: long side to 513, pad bottom/right with 128, crop, nearest back.
        scale = 513 / max(width, height)
        rw, rh = max(1, round(width * scale)), max(1, round(height * scale))
        padded = np.full((513, 513, 3), 128, np.uint8)
        padded[:rh, :rw] = np.asarray(image.resize((rw, rh), Image.BILINEAR))
        classes = large.run(["classes"], {"input": padded[None]})[0][0][:rh, :rw]
        rows["conf_large"].append(confusion(gt, nearest_resize(classes, width, height)))
        if (i + 1) % 50 == 0:
            print(f"  {name}: {i + 1}/{len(ids)} images, {time.time() - start:.0f} s", flush=True)
    data = {k: np.asarray(v) for k, v in rows.items()}
    data["ids"] = np.asarray(ids)
    np.savez_compressed(path, **data)
    return data


# ----------------------------------------------------------------------------- metrics


def per_class_iou(conf):
    """Per-class IoU of one confusion matrix (0 where the class is absent from both) and the
    mask of classes present in ground truth or prediction."""
    tp = np.diagonal(conf, axis1=-2, axis2=-1).astype(np.float64)
    union = conf.sum(-1) + conf.sum(-2) - tp
    return np.where(union > 0, tp / np.maximum(union, 1), 0.0), union > 0


def iou_img(conf):
    iou, present = per_class_iou(conf)
    return (iou * present).sum(-1) / np.maximum(present.sum(-1), 1)


def miou_curve(order, conf_small, conf_large, gt_classes):
    """Hybrid mIoU (classes present in the set's ground truth) after sending order[:k] remote,
    for k = 0..n."""
    delta = (conf_large - conf_small)[order].astype(np.float64)
    totals = conf_small.sum(0)[None] + np.concatenate([np.zeros((1, CLASSES, CLASSES)), np.cumsum(delta, 0)])
    iou, _ = per_class_iou(totals)
    return iou[:, gt_classes].mean(-1)


def auc(curve):
    x = np.linspace(0, 1, len(curve))
    return float(np.sum((curve[1:] + curve[:-1]) / 2 * np.diff(x)))


def greedy_oracle_order(conf_small, conf_large, gt_classes):
    """Sends remote, step by step, the frame that raises hybrid mIoU most: an upper reference
    for set-level mIoU, which per-image gain ordering is not (mIoU does not add up over images)."""
    n = len(conf_small)
    total = conf_small.sum(0).astype(np.float64)
    delta = (conf_large - conf_small).astype(np.float64)
    left = list(range(n))
    order = []
    for _ in range(n):
        candidates = total[None] + delta[left]
        iou, _ = per_class_iou(candidates)
        best = int(np.argmax(iou[:, gt_classes].mean(-1)))
        order.append(left.pop(best))
        total += delta[order[-1]]
    return np.asarray(order)


class Routing:
    """Reference AUCs of one test set, computed once: random (mean of permutations), the oracle
    of issue 9 (true per-image gain first) and the greedy set-level oracle."""

    def __init__(self, conf_small, conf_large, rng_seed=0, random_rounds=200):
        self.conf_small, self.conf_large = conf_small, conf_large
        self.gt_classes = conf_small.sum(0).sum(1) > 0
        n = len(conf_small)
        gain = iou_img(conf_large) - iou_img(conf_small)
        rng = np.random.default_rng(rng_seed)
        self.random = np.mean([self.auc(rng.permutation(n)) for _ in range(random_rounds)])
        self.gain_oracle = self.auc(np.argsort(-gain, kind="stable"))
        self.greedy_oracle = self.auc(greedy_oracle_order(conf_small, conf_large, self.gt_classes))
        curve = miou_curve(np.arange(n), conf_small, conf_large, self.gt_classes)
        self.small_miou, self.large_miou = curve[0], curve[-1]

    def auc(self, order):
        return auc(miou_curve(order, self.conf_small, self.conf_large, self.gt_classes))

    def quality(self, score, greedy=False):
        """Normalised AUC of a remote-first score (higher = send remote earlier)."""
        oracle = self.greedy_oracle if greedy else self.gain_oracle
        return (self.auc(np.argsort(-score, kind="stable")) - self.random) / (oracle - self.random)


def pearson(a, b):
    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


# ----------------------------------------------------------------------------- study


def image_stats(name, assets, data, cache_dir):
    """Cheap per-image statistics (no network): RGB mean and std, mean gradient magnitude,
    fraction of dark pixels, aspect ratio. Added to the cached set on first use."""
    from PIL import Image

    if "image_stats" in data:
        return data
    folder, _ = SETS[name]
    rows = []
    for image_id in data["ids"]:
        image = Image.open(os.path.join(assets, folder, "JPEGImages", str(image_id) + ".jpg")).convert("RGB")
        rgb = np.asarray(image.resize((257, 257), Image.BILINEAR), np.float32) / 255.0
        gray = rgb.mean(2)
        gradient = np.abs(np.diff(gray, axis=0)).mean() + np.abs(np.diff(gray, axis=1)).mean()
        rows.append(np.concatenate([rgb.mean((0, 1)), rgb.std((0, 1)), [gradient, (gray < 0.15).mean(), image.size[0] / image.size[1]]]))
    data = dict(data)
    data["image_stats"] = np.asarray(rows, np.float32)
    np.savez_compressed(os.path.join(cache_dir, f"{name}.npz"), **data)
    return data


def concat(datasets, names):
    return {k: np.concatenate([datasets[n][k] for n in names]) for k in datasets[names[0]]}


FEATURES = {
    # name: (parts, extra decision cost beyond the shared encoder, in words)
    "spp_max": (["spp_max"], "none"),
    "spp_avg": (["spp_avg"], "none"),
    "spp_max+avg": (["spp_max", "spp_avg"], "none"),
    "spp129_max": (["spp129_max"], "encoder at 129 (0.28 GFLOPs)"),
    "spp129_avg": (["spp129_avg"], "encoder at 129 (0.28 GFLOPs)"),
    "spp_max+img": (["spp_max", "image_stats"], "~0"),
    "spp_max+conf": (["spp_max", "maxprob", "entropy", "hist"], "small head (0.39 GFLOPs)"),
    "conf_only": (["maxprob", "entropy", "hist"], "small head (0.39 GFLOPs)"),
}


def feature_matrix(data, variant):
    parts = [data[p] if data[p].ndim == 2 else data[p][:, None] for p in FEATURES[variant][0]]
    return np.concatenate(parts, axis=1).astype(np.float64)


def make_model(kind, seed):
    from sklearn.linear_model import RidgeCV
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "ridge":
        return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(0, 5, 11)))
    # Like the decision network (one hidden ReLU layer, Adam, batch 20), narrower (256) so that
    # the study's hundreds of fits finish on 2 cores.
    return make_pipeline(
        StandardScaler(),
        MLPRegressor(hidden_layer_sizes=(256,), alpha=1.0, learning_rate_init=1e-3, batch_size=20, max_iter=60, random_state=seed),
    )


TARGETS = ["thesis_all", "thesis_fg", "class_img", "iou_img", "gain"]


def fit_predict(target, model_kind, x_train, train, x_test, presence=0.1, seed=0):
    """Fits one regressor for `target`; returns (remote-first score on the test set, predicted
    IoU_img or None, predicted gain or None)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    if target == "gain":
        pred = make_model(model_kind, seed).fit(x_train, iou_img(train["conf_large"]) - iou_img(train["conf_small"])).predict(x_test)
        return pred, None, pred
    if target == "iou_img":
        pred = np.clip(make_model(model_kind, seed).fit(x_train, iou_img(train["conf_small"])).predict(x_test), 0, 1)
        return -pred, pred, None
    # Per-class IoU targets (the thesis): 21 outputs, 0 for classes absent from both.
    y, _ = per_class_iou(train["conf_small"])
    pred = np.clip(make_model(model_kind, seed).fit(x_train, y).predict(x_test), 0, 1)
    if target == "thesis_all":
        return -pred.max(1), None, None
    if target == "thesis_fg":
        return -pred[:, 1:].max(1), None, None
    present = pred >= presence
    img = np.where(present.any(1), (pred * present).sum(1) / np.maximum(present.sum(1), 1), 0.0)
    return -img, img, None


def subset(data, mask):
    return {k: v[mask] for k, v in data.items()}


def camvid_sequences(datasets, sequences):
    both = concat(datasets, ["camvid_train", "camvid_val"])
    return subset(both, np.array([str(i).split("_")[0] in sequences for i in both["ids"]]))


def splits(datasets):
    """(label, [(train, test), ...]): several folds when the test set is cross-validated; the
    folds' test parts together form the test set."""
    sets = lambda *names: concat(datasets, list(names))  # noqa: E731
    coco = datasets["coco_voc20"]
    folds = np.arange(len(coco["ids"])) % 5
    coco_cv = [(concat({"a": subset(coco, folds != f), "b": datasets["voc"]}, ["a", "b"]), subset(coco, folds == f)) for f in range(5)]
    return [
        ("camvid_train+voc → coco_voc20", [(sets("camvid_train", "voc"), sets("coco_voc20"))]),
        ("coco_voc20 → camvid_train", [(sets("coco_voc20"), sets("camvid_train"))]),
        ("coco_voc20+voc → camvid_val", [(sets("coco_voc20", "voc"), sets("camvid_val"))]),
        ("camvid_train+coco_voc20 → voc", [(sets("camvid_train", "coco_voc20"), sets("voc"))]),
        ("camvid_train → camvid_val (adjacent frames, not independent)", [(sets("camvid_train"), sets("camvid_val"))]),
        (
            "CamVid across sequences: 0001TP+0006R0 → 0016E5 (train and val frames)",
            [(camvid_sequences(datasets, {"0001TP", "0006R0"}), camvid_sequences(datasets, {"0016E5"}))],
        ),
        ("coco_voc20 5-fold cross-validation (+voc in every training fold)", coco_cv),
    ]


EXPORTED = {"CamVid across sequences": "camvid_seq", "camvid_train+voc → coco_voc20": "to_coco"}


def export_samples(label, folds, out_dir=None):
    """Writes the first fold's training and test samples of the CamVid cross-sequence and COCO
    cross-set splits in the flat format tests/decision_train_real.rs reads (little endian):
    u32 count, u32 spp_len, then per sample spp_len f32 (SPP of the 257 base: max pooling in
    samples_<split>_*.bin, average in samples_<split>_avg_*.bin), 21 f32 per-class IoU of the
    small network, 21 u8 present flags, f32 gain."""
    key = next((v for k, v in EXPORTED.items() if label.startswith(k)), None)
    if key is None or out_dir is None:
        return
    for (part, data), (suffix, spp_key) in itertools.product(zip(("train", "test"), folds[0]), (("", "spp_max"), ("_avg", "spp_avg"))):
        iou, present = per_class_iou(data["conf_small"])
        gain = iou_img(data["conf_large"]) - iou_img(data["conf_small"])
        with open(os.path.join(out_dir, f"samples_{key}{suffix}_{part}.bin"), "wb") as f:
            f.write(np.array([len(gain), data[spp_key].shape[1]], "<u4").tobytes())
            for i in range(len(gain)):
                f.write(data[spp_key][i].astype("<f4").tobytes())
                f.write(iou[i].astype("<f4").tobytes())
                f.write(present[i].astype(np.uint8).tobytes())
                f.write(np.array([gain[i]], "<f4").tobytes())


def score_rust(datasets, out_dir):
    """Routing quality of the Rust decision network's scores (rust_scores_<split>.csv)."""
    print("| split | policy | nAUC (gain oracle / greedy oracle) |")
    print("|---|---|---:|")
    for label, folds in splits(datasets):
        key = next((v for k, v in EXPORTED.items() if label.startswith(k)), None)
        if key is None:
            continue
        test = folds[0][1]
        routing = Routing(test["conf_small"], test["conf_large"])
        print(f"| {label} | small maxprob (low first) | {routing.quality(-test['maxprob']):.2f} / {routing.quality(-test['maxprob'], greedy=True):.2f} |")
        for suffix, pooling in (("", "SPP max"), ("_avg", "SPP average")):
            path = os.path.join(out_dir, f"rust_scores_{key}{suffix}.csv")
            if not os.path.isfile(path):
                continue
            scores = np.genfromtxt(path, delimiter=",", names=True)
            if len(scores) != len(test["maxprob"]):
                sys.exit(f"study_routing: {path} has {len(scores)} rows, the split's test set {len(test['maxprob'])}")
            for rule in scores.dtype.names:
                score = scores[rule]
                print(f"| {label} | decision network ({pooling}), {rule} rule | {routing.quality(score):.2f} / {routing.quality(score, greedy=True):.2f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", default=os.environ.get("EDGESEG_ASSETS", "../shared/assets"))
    parser.add_argument("--out", default="out/study_routing")
    parser.add_argument("--models", default="models/derived")
    parser.add_argument("--quick", action="store_true", help="ridge only, fewer feature variants")
    parser.add_argument(
        "--rust-scores",
        action="store_true",
        help="only score the Rust decision network's predictions written by tests/decision_train_real.rs",
    )
    parser.add_argument("--export-only", action="store_true", help="only write the samples_*.bin files for tests/decision_train_real.rs")
    args = parser.parse_args()
    try:
        import onnxruntime as ort
        import PIL  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as e:
        sys.exit(f"study_routing: {e}: pip install pillow scikit-learn onnxruntime")
    os.makedirs(args.out, exist_ok=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    paths = [
        os.path.join(args.models, "small_encoder.onnx"),
        os.path.join(args.models, "small_head.onnx"),
        os.path.join(args.assets, "models", "deeplabv3_mnv2_voc_513_fp32.onnx"),
    ]
    for p in paths:
        if not os.path.isfile(p):
            sys.exit(f"study_routing: {p} not found (run scripts/split_small.py; check --assets)")
    sessions = [ort.InferenceSession(p, opts, providers=["CPUExecutionProvider"]) for p in paths]
    datasets = {}
    for name in SETS:
        print(f"study_routing: {name}", file=sys.stderr, flush=True)
        datasets[name] = image_stats(name, args.assets, compute_set(name, args.assets, sessions, args.out), args.out)

    if args.rust_scores:
        return score_rust(datasets, args.out)
    if args.export_only:
        for label, folds in splits(datasets):
            export_samples(label, folds, args.out)
        return

    print("## Sets (small: stretch 257; large fp32: pad 513; class maps resized nearest)\n")
    print("| set | images | mIoU small | mIoU large | mean IoU_img small | large | mean gain | corr(maxprob, IoU_img) | corr(maxprob, gain) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, d in datasets.items():
        gt_classes = d["conf_small"].sum(0).sum(1) > 0
        m_small = per_class_iou(d["conf_small"].sum(0))[0][gt_classes].mean()
        m_large = per_class_iou(d["conf_large"].sum(0))[0][gt_classes].mean()
        s, l = iou_img(d["conf_small"]), iou_img(d["conf_large"])
        print(
            f"| {name} | {len(s)} | {m_small * 100:.1f} | {m_large * 100:.1f} | {s.mean():.3f} | {l.mean():.3f} | {(l - s).mean():+.3f} "
            f"| {pearson(d['maxprob'], s):.2f} | {pearson(d['maxprob'], l - s):.2f} |"
        )

    variants = list(FEATURES) if not args.quick else ["spp_max", "spp_avg", "spp129_max", "spp_max+conf"]
    models = ["ridge"] if args.quick else ["ridge", "mlp"]
    print(
        "\nNormalised AUC of hybrid mIoU vs remote fraction, (AUC − AUC_random) / (AUC_oracle − AUC_random), "
        "with the oracle of issue 9 (true per-image gain first) and, after the slash, the greedy set-level oracle. "
        "Regressor cells add MAE / Pearson r of predicted vs true IoU_img (class_img, iou_img) or gain (gain).\n"
    )
    summary = {}  # (policy, features, model, target) -> [nAUC gain oracle per independent split]
    for label, folds in splits(datasets):
        independent = "not independent" not in label
        test = {k: np.concatenate([t[k] for _, t in folds]) for k in folds[0][1]}
        routing = Routing(test["conf_small"], test["conf_large"])
        true_img = iou_img(test["conf_small"])
        true_gain = iou_img(test["conf_large"]) - true_img
        print(
            f"### {label}: {len(true_img)} test images, mIoU small {routing.small_miou * 100:.1f} → large {routing.large_miou * 100:.1f}; "
            f"AUC random {routing.random:.4f}, gain oracle {routing.gain_oracle:.4f}, greedy oracle {routing.greedy_oracle:.4f}\n"
        )
        print("| policy | features | model | " + " | ".join(TARGETS) + " |")
        print("|---|---|---|" + "---:|" * len(TARGETS))

        def cell(score, key=None):
            quality = routing.quality(score)
            if key is not None and independent:
                summary.setdefault(key, []).append((quality, routing.quality(score, greedy=True)))
            return f"{quality:.2f} / {routing.quality(score, greedy=True):.2f}"

        print(f"| small maxprob (low first) | – | – | {cell(-test['maxprob'], ('small maxprob', '–', '–', '–'))} |" + " |" * (len(TARGETS) - 1))
        print(f"| small entropy (high first) | – | – | {cell(test['entropy'], ('small entropy', '–', '–', '–'))} |" + " |" * (len(TARGETS) - 1))
        print(f"| true IoU_img small (low first) | – | – | {cell(-true_img, ('true IoU_img small', '–', '–', '–'))} |" + " |" * (len(TARGETS) - 1))
        for variant in variants:
            for model_kind in models:
                cells = []
                for target in TARGETS:
                    parts = [fit_predict(target, model_kind, feature_matrix(tr, variant), tr, feature_matrix(te, variant)) for tr, te in folds]
                    score = np.concatenate([p[0] for p in parts])
                    text = cell(score, ("regressor", variant, model_kind, target))
                    if parts[0][1] is not None:
                        pred_img = np.concatenate([p[1] for p in parts])
                        text += f" ({np.abs(pred_img - true_img).mean():.3f}, r {pearson(pred_img, true_img):.2f})"
                    if parts[0][2] is not None:
                        pred_gain = np.concatenate([p[2] for p in parts])
                        text += f" ({np.abs(pred_gain - true_gain).mean():.3f}, r {pearson(pred_gain, true_gain):.2f})"
                    cells.append(text)
                print(f"| regressor | {variant} | {model_kind} | " + " | ".join(cells) + " |", flush=True)
        print()
        export_samples(label, folds, args.out)

    print("### Summary: mean normalised AUC over the independent splits (all but camvid_train → camvid_val)\n")
    print("Gain oracle / greedy oracle; the number of splits where the policy beats the small network's maxprob in brackets.\n")
    print("| policy | features | model | target | mean nAUC | splits beating maxprob |")
    print("|---|---|---|---|---:|---:|")
    reference = np.array([q for q, _ in summary[("small maxprob", "–", "–", "–")]])
    ranked = sorted(summary.items(), key=lambda kv: -np.mean([q for q, _ in kv[1]]))
    for (policy, variant, model_kind, target), values in ranked:
        gain_q = np.array([q for q, _ in values])
        greedy_q = np.array([g for _, g in values])
        wins = int((gain_q > reference).sum())
        print(f"| {policy} | {variant} | {model_kind} | {target} | {gain_q.mean():.2f} / {greedy_q.mean():.2f} | {wins}/{len(gain_q)} |")


if __name__ == "__main__":
    main()
