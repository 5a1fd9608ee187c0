#!/usr/bin/env python3
"""Split the small DeepLab network twice, so the decision network can reuse the features of
the part before the cut and a local frame pays for that part only once:

- at its encoder output (160 channels, stride 8): small_encoder.onnx + small_head.onnx;
- early, after its sixth inverted-residual block (`expanded_conv_5`, 16 channels, stride 8,
  0.09 of its 1.45 GFLOPs): small_stem.onnx + small_trunk.onnx. A decision on the stem
  wastes almost nothing on the frames it sends remote.

  small_encoder.onnx  input  `input`    float32 [N, H, W, 3] NHWC RGB, (x - 127.5) / 127.5
                      output `features` float32 [N, 160, (H-1)/8+1, (W-1)/8+1]
                      H and W are dynamic (the encoder is only Transpose/Conv/Clip/Add), so the
                      same file runs on a downscaled frame (129x129 gives 17x17 features).
  small_head.onnx     input  `features` float32 [N, 160, 33, 33]
                      output `logits`   float32 [N, 21, 257, 257] NCHW (as the whole model)
                      The head's image pooling (AveragePool 33x33) and its Resize scales are
                      fixed, so it accepts only the features of a 257x257 frame.

The encoder cut is the tensor that both the ASPP 1x1 convolution and the image-pooling
AveragePool consume; it is found in the graph, not named by hand, so a re-exported model still
splits. The stem cut is named (STEM_CUT); stem and trunk have the same shapes and dynamic input
as encoder and head, with 16 feature channels.

Checks (fails loudly), for both pairs: encoder -> head reproduces the whole model's logits (max abs diff
below --tolerance, argmax agreement 100 %) on the test images in the assets' testdata/, and the
encoder at 129x129 gives 17x17 features. Prints the GFLOPs (2 x Conv multiply-adds, from onnx
shape inference) of each part.

Usage: scripts/split_small.py [--assets DIR] [--out-dir models/derived] [--force]

Idempotent: does nothing when both outputs are newer than the input model and this script.
"""

import argparse
import os
import sys

import numpy as np
import onnx
from onnx import helper, shape_inference

SMALL = "models/deeplabv3_mnv2_dm05_voc_257.onnx"
# (first part, second part, cut tensor or None to find the ASPP input, feature channels)
SPLITS = [
    ("small_encoder.onnx", "small_head.onnx", None, 160),
    ("small_stem.onnx", "small_trunk.onnx", "MobilenetV2/expanded_conv_5/add", 16),
]
FEATURES = "features"
TEST_IMAGES = ["grace_hopper.bmp", "traffic0001.bmp", "bird_segmentation.bmp"]
INPUT_SIZE = 257
DOWNSCALED_SIZE = 129


def fail(message):
    print(f"split_small: {message}", file=sys.stderr)
    sys.exit(1)


def read_bmp_rgb(path):
    """Uncompressed 24/32-bit BMP as an RGB uint8 array (no Pillow needed at setup time)."""
    data = open(path, "rb").read()
    if data[:2] != b"BM":
        fail(f"{path} is not a BMP file")
    offset = int.from_bytes(data[10:14], "little")
    width = int.from_bytes(data[18:22], "little", signed=True)
    height = int.from_bytes(data[22:26], "little", signed=True)
    bits = int.from_bytes(data[28:30], "little")
    compression = int.from_bytes(data[30:34], "little")
    if bits not in (24, 32) or compression not in (0, 3):
        fail(f"{path}: only uncompressed 24/32-bit BMPs are read here (has {bits} bits, compression {compression})")
    channels = bits // 8
    stride = (width * channels + 3) // 4 * 4
    rows = abs(height)
    pixels = np.frombuffer(data, np.uint8, count=stride * rows, offset=offset).reshape(rows, stride)
    pixels = pixels[:, : width * channels].reshape(rows, width, channels)[:, :, 2::-1]
    return np.ascontiguousarray(pixels[::-1] if height > 0 else pixels)


def stretch_bilinear(rgb, size):
    """Bilinear resize to size x size (half-pixel centres, as OpenCV's INTER_LINEAR)."""
    h, w = rgb.shape[:2]

    def axis(n_in):
        x = (np.arange(size) + 0.5) * n_in / size - 0.5
        x = np.clip(x, 0, n_in - 1)
        lo = np.floor(x).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (x - lo).astype(np.float32)

    y0, y1, fy = axis(h)
    x0, x1, fx = axis(w)
    img = rgb.astype(np.float32)
    top = img[y0][:, x0] * (1 - fx)[None, :, None] + img[y0][:, x1] * fx[None, :, None]
    bottom = img[y1][:, x0] * (1 - fx)[None, :, None] + img[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]


def preprocess(rgb, size=INPUT_SIZE):
    return ((stretch_bilinear(rgb, size) - 127.5) / 127.5)[None].astype(np.float32)


def find_cut(graph):
    """The tensor consumed by both a 1x1 Conv (ASPP branch 0) and an AveragePool (image pooling)."""
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for name, nodes in consumers.items():
        ops = {n.op_type for n in nodes}
        if ops >= {"Conv", "AveragePool"}:
            convs = [n for n in nodes if n.op_type == "Conv"]
            one_by_one = any(
                list(helper.get_attribute_value(a)) == [1, 1] for n in convs for a in n.attribute if a.name == "kernel_shape"
            )
            if one_by_one:
                return name
    fail("no tensor feeds both a 1x1 Conv and an AveragePool: is this the DeepLabV3 ASPP graph?")


def rename_tensor(graph, old, new):
    for node in graph.node:
        node.input[:] = [new if x == old else x for x in node.input]
        node.output[:] = [new if x == old else x for x in node.output]


def split(model, cut):
    graph = model.graph
    # Extractor needs shapes; value_info is empty in this file, so infer them first.
    inferred = shape_inference.infer_shapes(model)
    extractor = onnx.utils.Extractor(inferred)
    encoder = extractor.extract_model([graph.input[0].name], [cut])
    head = extractor.extract_model([cut], [graph.output[0].name])
    for part in (encoder, head):
        rename_tensor(part.graph, cut, FEATURES)
        for io in list(part.graph.input) + list(part.graph.output):
            if io.name == cut:
                io.name = FEATURES
        # Keep the original IR version and opsets so older runtimes load the parts like the whole.
        part.ir_version = model.ir_version
        del part.opset_import[:]
        part.opset_import.extend(model.opset_import)
        part.producer_name = "edgeseg scripts/split_small.py"
        part.producer_version = ""
    # The encoder's spatial size follows its input: drop inferred intermediate shapes and name
    # the dims, so ONNX Runtime accepts any H x W.
    del encoder.graph.value_info[:]
    in_dims = encoder.graph.input[0].type.tensor_type.shape.dim
    out_dims = encoder.graph.output[0].type.tensor_type.shape.dim
    in_dims[0].dim_param = "N"
    out_dims[0].dim_param = "N"
    for dim, name in ((in_dims[1], "H"), (in_dims[2], "W"), (out_dims[2], "h"), (out_dims[3], "w")):
        dim.Clear()
        dim.dim_param = name
    head.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    del head.graph.value_info[:]
    onnx.checker.check_model(encoder, full_check=True)
    onnx.checker.check_model(head, full_check=True)
    return encoder, head


def conv_gflops(model, input_hw=None):
    """2 x Conv multiply-adds at batch 1 (input_hw fixes a dynamic spatial input)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].Clear()
    dims[0].dim_value = 1
    if input_hw is not None:
        for dim, value in zip((dims[1], dims[2]), input_hw):
            dim.Clear()
            dim.dim_value = value
    model = shape_inference.infer_shapes(model, strict_mode=True)
    shapes = {}
    for vi in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    macs = 0
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        out = shapes.get(node.output[0])
        w = weights.get(node.input[1])
        if not out or not w or 0 in out:
            fail(f"shape inference left Conv {node.name} without a shape")
        # MACs = output elements x (input channels per group x kernel area).
        macs += int(np.prod(out)) * int(np.prod(w[1:]))
    return 2 * macs / 1e9


def verify(whole_path, encoder_path, head_path, channels, testdata, tolerance):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sessions = [ort.InferenceSession(p, opts, providers=["CPUExecutionProvider"]) for p in (whole_path, encoder_path, head_path)]
    whole, encoder, head = sessions
    images = [os.path.join(testdata, name) for name in TEST_IMAGES if os.path.isfile(os.path.join(testdata, name))]
    if not images:
        fail(f"no test image of {TEST_IMAGES} in {testdata}: cannot check the split")
    for path in images:
        x = preprocess(read_bmp_rgb(path))
        expected = whole.run(["logits"], {"input": x})[0]
        features = encoder.run([FEATURES], {"input": x})[0]
        if features.shape != (1, channels, 33, 33):
            fail(f"{encoder_path} output on {path} has shape {features.shape}, expected (1, {channels}, 33, 33)")
        got = head.run(["logits"], {FEATURES: features})[0]
        diff = float(np.abs(got - expected).max())
        agree = float((got.argmax(1) == expected.argmax(1)).mean())
        print(f"split_small: {os.path.basename(path)}: max |logit diff| {diff:.3g}, argmax agreement {agree * 100:.3f} %")
        if diff > tolerance or agree < 1.0:
            fail(f"{encoder_path} -> {head_path} differs from the whole model on {path} (max diff {diff}, agreement {agree}); the split is wrong")
    x = preprocess(read_bmp_rgb(images[0]), DOWNSCALED_SIZE)
    small_features = encoder.run([FEATURES], {"input": x})[0]
    expect = (DOWNSCALED_SIZE - 1) // 8 + 1
    print(f"split_small: encoder at {DOWNSCALED_SIZE}x{DOWNSCALED_SIZE} gives features {list(small_features.shape)}")
    if small_features.shape != (1, channels, expect, expect):
        fail(f"{encoder_path} at {DOWNSCALED_SIZE}x{DOWNSCALED_SIZE} gives {small_features.shape}, expected (1, {channels}, {expect}, {expect})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", default=os.environ.get("EDGESEG_ASSETS", "../shared/assets"))
    parser.add_argument("--out-dir", default="models/derived")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed |logit difference|")
    args = parser.parse_args()

    whole_path = os.path.join(args.assets, SMALL)
    if not os.path.isfile(whole_path):
        fail(f"{whole_path} not found (set --assets or EDGESEG_ASSETS to the folder with models/MANIFEST.md)")
    newest_input = max(os.path.getmtime(whole_path), os.path.getmtime(__file__))
    model = None
    for first, second, cut, channels in SPLITS:
        encoder_path = os.path.join(args.out_dir, first)
        head_path = os.path.join(args.out_dir, second)
        outputs = (encoder_path, head_path)
        if not args.force and all(os.path.isfile(p) and os.path.getmtime(p) > newest_input for p in outputs):
            print(f"split_small: {encoder_path} and {head_path} are up to date")
            continue
        model = model or onnx.load(whole_path)
        cut = cut or find_cut(model.graph)
        if not any(cut in node.output for node in model.graph.node):
            fail(f"{whole_path} has no tensor {cut!r} to cut at: is this the DeepLabV3 MobileNetV2 graph?")
        print(f"split_small: cutting {whole_path} at {cut!r}")
        encoder, head = split(model, cut)
        whole_g = conv_gflops(model)
        enc_g = conv_gflops(encoder, (INPUT_SIZE, INPUT_SIZE))
        enc_small_g = conv_gflops(encoder, (DOWNSCALED_SIZE, DOWNSCALED_SIZE))
        head_g = conv_gflops(head)
        print(
            f"split_small: GFLOPs (2 x Conv MACs, batch 1): whole {whole_g:.3f} = {first} {enc_g:.3f} + {second} {head_g:.3f}; "
            f"{first} at {DOWNSCALED_SIZE}x{DOWNSCALED_SIZE}: {enc_small_g:.3f}"
        )
        if abs(enc_g + head_g - whole_g) > 1e-6:
            fail(f"{first} + {second} GFLOPs {enc_g + head_g} differ from the whole model's {whole_g}")

        os.makedirs(args.out_dir, exist_ok=True)
        tmp = [p + ".tmp" for p in outputs]
        onnx.save(encoder, tmp[0])
        onnx.save(head, tmp[1])
        verify(whole_path, tmp[0], tmp[1], channels, os.path.join(args.assets, "models", "testdata"), args.tolerance)
        for t, p in zip(tmp, outputs):
            os.replace(t, p)
        print(f"split_small: wrote {encoder_path} and {head_path}")


if __name__ == "__main__":
    main()
