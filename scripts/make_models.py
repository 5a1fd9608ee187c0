#!/usr/bin/env python3
"""Build edgeseg's own small but real ONNX segmentation models, so the project runs
on a fresh machine without downloading any weights.

Both models take `input` float32 [N, 3, 256, 256] (RGB, ImageNet-normalised:
x = (rgb / 255 - mean) / std; N is a dynamic batch dimension) and return `logits`
float32 [N, 21, 256, 256] (PASCAL VOC classes, NCHW, at input resolution).

Semantics: a per-pixel nearest-colour classifier against 21 reference colours
(REFERENCE_COLOURS below, one per VOC class). It is a 1x1 convolution computing
    score_k = LOGIT_SCALE * (2 c_k . p - |c_k|^2)      (p, c_k in 0..1 RGB)
which is -LOGIT_SCALE * |p - c_k|^2 up to a per-pixel constant, so argmax is the
nearest reference colour. The ImageNet normalisation is undone by folding it into
the weights and bias (p = x * std + mean).

  small.onnx  classifies a 4x4 average-pooled image (64x64) and upsamples the
              logits x4 with nearest Resize: blocky, coarse masks.
  large.onnx  classifies at full resolution: sharp masks.

Each model also carries a real convolutional tower (random He-initialised weights,
fixed seed) whose 21-channel output is multiplied by TOWER_GAIN (1e-3) and added to
the classifier logits: the masks stay dominated by the colour classifier, but the
inference cost is that of a real network (small 0.64 GFLOP per frame, large 2.78,
4.3x; counted as 2 x convolution multiply-accumulates).

Reference colours: black (background) plus the VOC palette colours, except that the
saturated colours GStreamer 1.22's `videotestsrc pattern=smpte` draws (100% bars) are
made exact references of distinct classes, so the test videos segment into known
classes:

    SMPTE bar            RGB             class
    white                255,255,255     person
    yellow               255,255,0       train
    cyan                 0,255,255       bus
    green                0,255,0         sofa
    magenta              255,0,255       horse
    red                  255,0,0         chair
    blue                 0,0,255         tvmonitor
    black, pluge         0,0,0 .. 19     background
    mid grey             128,128,128     car         (its VOC palette colour)
    -I  (bottom left)    0,0,128         boat        (its VOC palette colour; drawn as
                                                      ~0,56,139 when the source is YUV)

The other classes keep their VOC palette colour. The +Q patch is drawn 0,128,255 in
RGB but ~110,0,214 in YUV, so it lands on whatever class is nearest (bus or bottle),
and the "snow" in the bottom right is random grey: background, car or person. Any two
references are at least 64/255 apart (cat 64,0,0 vs black and vs aeroplane 128,0,0).

Usage: scripts/make_models.py [--out-dir models] [--force] [--no-verify] [--bench]

Idempotent: the models are built in memory (deterministic: fixed seed, fixed
producer fields), and a file is only written when its bytes differ from what is on
disk. --force rewrites and re-verifies everything. Verification needs onnxruntime.
"""

import argparse
import os
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# IR version 8 is the one that goes with opset 17; pinning it (instead of the onnx
# package's newest) keeps the files loadable by older ONNX Runtime builds.
IR_VERSION = 8
SEED = 20240917
INPUT_SIZE = 256
# Logits are -LOGIT_SCALE * squared RGB distance (0..1 units) plus a per-pixel constant.
# The closest two references are (64/255)^2 = 0.063 apart, so 40 gives a pixel on a
# reference colour a logit margin of at least 2.5 (softmax >= ~0.7): confident, but an
# in-between colour still shows up as uncertain.
LOGIT_SCALE = 40.0
# Weight of the compute tower in the logits: its contribution stays below ~0.01, far
# under the classifier's margins, so it changes the argmax only on near-ties.
TOWER_GAIN = 1e-3

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float64)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float64)

CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
    "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]

# One RGB reference colour per class, in CLASSES order (see the module doc).
REFERENCE_COLOURS = np.array([
    (0, 0, 0),        # background   black, SMPTE black and pluge
    (128, 0, 0),      # aeroplane    VOC
    (0, 128, 0),      # bicycle      VOC
    (128, 128, 0),    # bird         VOC
    (0, 0, 128),      # boat         VOC, SMPTE -I
    (128, 0, 128),    # bottle       VOC
    (0, 255, 255),    # bus          SMPTE cyan
    (128, 128, 128),  # car          VOC, mid grey
    (64, 0, 0),       # cat          VOC
    (255, 0, 0),      # chair        SMPTE red
    (64, 128, 0),     # cow          VOC
    (192, 128, 0),    # diningtable  VOC
    (64, 0, 128),     # dog          VOC
    (255, 0, 255),    # horse        SMPTE magenta
    (64, 128, 128),   # motorbike    VOC
    (255, 255, 255),  # person       SMPTE white
    (0, 64, 0),       # pottedplant  VOC
    (128, 64, 0),     # sheep        VOC
    (0, 255, 0),      # sofa         SMPTE green
    (255, 255, 0),    # train        SMPTE yellow
    (0, 0, 255),      # tvmonitor    SMPTE blue
], dtype=np.float64)

# Colours of the SMPTE test pattern and the class each must map to (checked at verify).
SMPTE_EXPECTED = [
    ("white", (255, 255, 255), "person"),
    ("yellow", (255, 255, 0), "train"),
    ("cyan", (0, 255, 255), "bus"),
    ("green", (0, 255, 0), "sofa"),
    ("magenta", (255, 0, 255), "horse"),
    ("red", (255, 0, 0), "chair"),
    ("blue", (0, 0, 255), "tvmonitor"),
    ("-I", (0, 0, 128), "boat"),
    ("-I as YUV", (0, 56, 139), "boat"),
    ("yellow as decoded", (251, 251, 3), "train"),
    ("black", (0, 0, 0), "background"),
    ("pluge +4%", (19, 19, 19), "background"),
    ("grey 50%", (128, 128, 128), "car"),
]

# Tower layout: list of (out_channels, stride) for 3x3 convolutions, then a 1x1 to 21.
SPECS = {
    # small: 3->32 /2, 32->32 /2 (now at 1/4 = 64x64), then 7 more 32->32 at 64x64.
    "small": {"pool": 4, "tower": [(32, 2), (32, 2)] + [(32, 1)] * 7},
    # large: 3->32 /2 (128x128), then 9 x 32->32 at 128x128.
    "large": {"pool": 1, "tower": [(32, 2)] + [(32, 1)] * 9},
}

MANIFEST_TEMPLATE = """\
# Model manifest: tells edgeseg how to feed and read an ONNX segmentation network.
# FIXTURE: a synthetic network made by scripts/make_models.py (random tower, nearest-colour
# classifier) for machines without the real models; tests name it explicitly. The real
# networks' manifests are models/deeplab-*.toml.
name = "{name}"
{onnx_line}# relative to this manifest; ${{EDGESEG_ASSETS}} is expanded
{gflops_line}# per frame at input size (edgeseg models info models/{name}.toml)
[input]
name = "input"
width = {size}
height = {size}
layout = "NCHW"              # axis order of the input tensor: "NCHW" or "NHWC"
dtype = "float32"            # "float32" (normalised as below) or "uint8" (raw pixels)
color = "RGB"                # channel order the network expects: "RGB" or "BGR"
fit = "stretch"              # "stretch" to the input size, or "pad" (keep aspect, pad with pad_value)
scale = 255.0                # pixel / scale, then (x - mean) / std
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
[output]
name = "logits"
kind = "logits"              # "logits" (float [N, classes, H, W], argmax taken) or "classes" (int64 [N, H, W])
layout = "NCHW"
classes = [{classes}]
"""


class GraphBuilder:
    """Collects nodes and initializers, tracks shapes and counts convolution FLOPs."""

    def __init__(self, name):
        self.name = name
        self.nodes = []
        self.initializers = []
        self.conv_macs = 0
        self._counter = 0

    def fresh(self, stem):
        self._counter += 1
        return f"{stem}_{self._counter}"

    def constant(self, stem, array):
        name = self.fresh(stem)
        self.initializers.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    def conv(self, x, shape, weight, bias, stride=1, stem="conv"):
        """shape = (C, H, W) of x; returns (output name, output shape)."""
        out_c, in_c, kh, kw = weight.shape
        assert in_c == shape[0], (in_c, shape)
        pad = kh // 2
        out_h = (shape[1] + 2 * pad - kh) // stride + 1
        out_w = (shape[2] + 2 * pad - kw) // stride + 1
        self.conv_macs += out_c * out_h * out_w * in_c * kh * kw
        w_name = self.constant(stem + "_w", weight)
        b_name = self.constant(stem + "_b", bias)
        y = self.fresh(stem)
        self.nodes.append(helper.make_node(
            "Conv", [x, w_name, b_name], [y], name=y,
            kernel_shape=[kh, kw], strides=[stride, stride], pads=[pad, pad, pad, pad]))
        return y, (out_c, out_h, out_w)

    def op(self, op_type, inputs, stem, **attrs):
        y = self.fresh(stem)
        self.nodes.append(helper.make_node(op_type, inputs, [y], name=y, **attrs))
        return y

    def upsample(self, x, factor):
        scales = self.constant("scales", [1.0, 1.0, float(factor), float(factor)])
        # asymmetric + floor: output pixel (y, x) copies source (y // f, x // f),
        # so each low-resolution decision covers exactly one f x f block.
        return self.op("Resize", [x, "", scales], "upsample", mode="nearest",
                       coordinate_transformation_mode="asymmetric", nearest_mode="floor")


def colour_classifier_weights():
    """1x1 conv weights [21, 3, 1, 1] and bias [21] acting on ImageNet-normalised input."""
    refs = REFERENCE_COLOURS / 255.0                       # c_k in 0..1
    # p = x * std + mean  =>  2 c_k . p - |c_k|^2 = sum_c (2 c_kc std_c) x_c + (2 c_k . mean - |c_k|^2)
    weight = LOGIT_SCALE * 2.0 * refs * STD[None, :]
    bias = LOGIT_SCALE * (2.0 * refs @ MEAN - (refs ** 2).sum(axis=1))
    return weight.reshape(len(CLASSES), 3, 1, 1), bias


def build_model(name):
    spec = SPECS[name]
    rng = np.random.default_rng(SEED + (0 if name == "small" else 1))
    g = GraphBuilder(name)
    size = INPUT_SIZE
    x, x_shape = "input", (3, size, size)

    # Semantic core: nearest-colour classifier, at 1/pool resolution.
    pool = spec["pool"]
    if pool > 1:
        pooled = g.op("AveragePool", [x], "pool", kernel_shape=[pool, pool], strides=[pool, pool])
        pooled_shape = (3, size // pool, size // pool)
    else:
        pooled, pooled_shape = x, x_shape
    cls_w, cls_b = colour_classifier_weights()
    colour_logits, colour_shape = g.conv(pooled, pooled_shape, cls_w, cls_b, stem="colour_logits")

    # Compute tower: real convolutions with He-initialised weights; its output is scaled by
    # TOWER_GAIN so it only nudges the logits.
    t, t_shape = x, x_shape
    for i, (out_c, stride) in enumerate(spec["tower"]):
        fan_in = t_shape[0] * 9
        w = rng.standard_normal((out_c, t_shape[0], 3, 3)) * np.sqrt(2.0 / fan_in)
        b = rng.standard_normal(out_c) * 0.01
        t, t_shape = g.conv(t, t_shape, w, b, stride=stride, stem=f"tower{i}")
        t = g.op("Relu", [t], f"tower{i}_relu")
    w = rng.standard_normal((len(CLASSES), t_shape[0], 1, 1)) * np.sqrt(1.0 / t_shape[0])
    t, t_shape = g.conv(t, t_shape, w, np.zeros(len(CLASSES)), stem="tower_head")
    factor = colour_shape[1] // t_shape[1]
    if factor > 1:
        t = g.upsample(t, factor)
    t = g.op("Mul", [t, g.constant("tower_gain", [TOWER_GAIN])], "tower_scaled")
    logits = g.op("Add", [colour_logits, t], "sum")
    if pool > 1:
        logits = g.upsample(logits, pool)
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits"))

    graph = helper.make_graph(
        g.nodes, f"edgeseg_{name}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(CLASSES), size, size])],
        initializer=g.initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
        producer_name="edgeseg scripts/make_models.py", producer_version="1",
        doc_string=f"edgeseg {name}: nearest-colour VOC classifier + compute tower (synthetic, no training)")
    onnx.checker.check_model(model, full_check=True)
    gflops = 2 * g.conv_macs / 1e9
    return model.SerializeToString(), gflops


def manifest_text(name, gflops):
    return MANIFEST_TEMPLATE.format(
        name=name,
        onnx_line=f'onnx = "{name}.onnx"'.ljust(29),
        gflops_line=f"gflops = {gflops:.2f}".ljust(29),
        size=INPUT_SIZE,
        classes=", ".join(f'"{c}"' for c in CLASSES))


def is_up_to_date(path, content):
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return f.read() == content


def write_atomically(path, content):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def normalise(rgb):
    """rgb: [..., 3] in 0..255 -> NCHW float32 input as the manifest prescribes."""
    x = (np.asarray(rgb, dtype=np.float64) / 255.0 - MEAN) / STD
    return np.ascontiguousarray(np.moveaxis(x, -1, -3)).astype(np.float32)


def solid(rgb):
    return normalise(np.broadcast_to(np.asarray(rgb, dtype=np.float64), (INPUT_SIZE, INPUT_SIZE, 3)))


def open_session(model, threads=1):
    """model: a path or the serialized bytes."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def verify(models):
    """Checks shapes, dynamic batch and the colour semantics of both models (name -> bytes) with onnxruntime."""
    rng = np.random.default_rng(7)
    sessions = {name: open_session(data) for name, data in models.items()}
    batch = rng.standard_normal((2, 3, INPUT_SIZE, INPUT_SIZE)).astype(np.float32)
    for name, sess in sessions.items():
        (out,) = sess.run(["logits"], {"input": batch})
        want = (2, len(CLASSES), INPUT_SIZE, INPUT_SIZE)
        if out.shape != want or out.dtype != np.float32 or not np.isfinite(out).all():
            raise SystemExit(f"verify {name}: output {out.shape} {out.dtype}, want {want} float32, finite")
        (single,) = sess.run(["logits"], {"input": batch[:1]})
        if not np.allclose(single[0], out[0], atol=1e-4):
            raise SystemExit(f"verify {name}: batch of 1 and batch of 2 disagree")

    solids = [(CLASSES[k], tuple(int(v) for v in REFERENCE_COLOURS[k]), CLASSES[k]) for k in range(len(CLASSES))]
    min_prob = 1.0
    for label, rgb, want in solids + SMPTE_EXPECTED:
        for name, sess in sessions.items():
            (out,) = sess.run(["logits"], {"input": solid(rgb)[None]})
            classes = np.unique(out[0].argmax(axis=0))
            if list(classes) != [CLASSES.index(want)]:
                got = ", ".join(CLASSES[c] for c in classes)
                raise SystemExit(f"verify {name}: solid {label} {rgb} classified as {got}, want {want}")
            logits = out[0, :, 0, 0].astype(np.float64)
            prob = np.exp(logits - logits.max())
            min_prob = min(min_prob, prob.max() / prob.sum())

    # Same picture, red left of column 130 and blue right of it: the large model's mask
    # follows the edge exactly, the small one's is quantised to 4-pixel blocks.
    picture = np.zeros((INPUT_SIZE, INPUT_SIZE, 3))
    picture[:, :130] = (255, 0, 0)
    picture[:, 130:] = (0, 0, 255)
    want = np.where(np.arange(INPUT_SIZE) < 130, CLASSES.index("chair"), CLASSES.index("tvmonitor"))
    want = np.broadcast_to(want, (INPUT_SIZE, INPUT_SIZE))
    agreement = {}
    for name, sess in sessions.items():
        (out,) = sess.run(["logits"], {"input": normalise(picture)[None]})
        agreement[name] = float((out[0].argmax(axis=0) == want).mean())
    if agreement["large"] != 1.0 or not agreement["small"] < 1.0:
        raise SystemExit(f"verify: pixel agreement with the true edge {agreement}, want large 1.0, small < 1.0")
    print(f"verified: shapes and dynamic batch; {len(solids)} reference and {len(SMPTE_EXPECTED)} SMPTE colours "
          f"classified right by both (softmax >= {min_prob:.3f}); edge agreement "
          f"small {agreement['small']:.4f}, large {agreement['large']:.4f}")


def bench(paths, runs=20):
    import time
    frame = solid((128, 64, 0))[None]
    for name, path in paths.items():
        for threads in (1, 2):
            sess = open_session(path, threads)
            for _ in range(3):
                sess.run(["logits"], {"input": frame})
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                sess.run(["logits"], {"input": frame})
                times.append(time.perf_counter() - start)
            print(f"bench {name}: {threads} thread(s): median {np.median(times) * 1e3:.1f} ms "
                  f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}, {runs} runs, batch 1)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default="models", help="where to write NAME.onnx and NAME.toml (default: models)")
    parser.add_argument("--force", action="store_true", help="rewrite and re-verify even if the files are up to date")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime checks")
    parser.add_argument("--bench", action="store_true", help="print onnxruntime single-frame latency (1 and 2 threads)")
    args = parser.parse_args()

    os.makedirs(args.out_dir, exist_ok=True)
    built = {}
    for name in SPECS:
        data, gflops = build_model(name)
        files = {os.path.join(args.out_dir, f"{name}.onnx"): data,
                 os.path.join(args.out_dir, f"{name}.toml"): manifest_text(name, gflops).encode()}
        stale = args.force or any(not is_up_to_date(path, content) for path, content in files.items())
        built[name] = (data, files, stale)
        print(f"{name}: {gflops:.3f} GFLOP per {INPUT_SIZE}x{INPUT_SIZE} frame, {len(data) / 1e3:.0f} kB, "
              + ("to be written" if stale else "up to date"))

    # Verify before writing, so a model that fails its checks never lands on disk.
    if any(stale for _, _, stale in built.values()) and not args.no_verify:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            sys.exit("onnxruntime is not installed (pip install onnxruntime), so the models cannot be "
                     "verified; pass --no-verify to skip the check")
        verify({name: data for name, (data, _, _) in built.items()})
    for name, (_, files, stale) in built.items():
        if stale:
            for path, content in files.items():
                write_atomically(path, content)
            print(f"{name}: wrote " + " and ".join(files))
    if args.bench:
        bench({name: path for name, (_, files, _) in built.items() for path in files if path.endswith(".onnx")})


if __name__ == "__main__":
    main()
