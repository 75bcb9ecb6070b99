"""Reference ChangeNet-Classification models, written in code (no downloaded weights).

They have TAO's interface (``input_1`` sample, ``input_2`` golden, ``[B,3,512,128]`` float32,
``output``) and a real Siamese structure: one shared, deterministic feature extractor applied
to both images, an embedding per image, and a head on the embedding difference. Their scores
separate changed pairs from unchanged ones, so they serve as the model of the demo and the
tests. They are tiny (a few KB) and run in milliseconds on a CPU.

Graph (both kinds share the backbone; ``B`` is dynamic or a static N)::

    x [B,3,512,128] -> AveragePool 4x4 -> Conv 3->8 3x3 -> Relu -> AveragePool 2x2
      -> Reshape [B, 8*64*16]                       = embedding e (one per input)
    d2 = ReduceMean((e_sample - e_golden)^2, axis 1)
    euclidean: output = Sqrt(d2)                    [B] (or [B,1])
    learnable: output = Gemm([Sqrt(d2), max|diff|]) [B,2] logits
"""

import os
from typing import Optional, Tuple, Union

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from changenet_trt.contract import (
    DEFAULT_GOLDEN_INPUT,
    DEFAULT_OUTPUT,
    DEFAULT_SAMPLE_INPUT,
    META_CUTOFF,
    META_PREPROCESS,
)
from changenet_trt.files import atomic_write, check_output_file

INPUT_SHAPE = (3, 512, 128)
FEATURES = 8
EMBED_SHAPE = (FEATURES, 64, 16)  # after the two poolings of a 512x128 image
EMBED_DIM = int(np.prod(EMBED_SHAPE))

# Chosen on the synthetic PCB data set (changenet_trt/data/synth.py; 2 x 1000 pairs, seeds 7 and
# 8): PASS pairs score at most ~0.05 (median 0.024), defect pairs mostly above 0.05; at 0.045
# the FPR is 0.14% and the defect capture 99.7-100% (tests/data/test_synth.py checks it).
EUCLIDEAN_CUTOFF = 0.045
# learnable head: defect logit - pass logit = GAIN * (rms_distance - EUCLIDEAN_CUTOFF)
# (+ a small max|diff| term); 250 puts PASS probabilities near 0 and defects near 1.
LEARNABLE_GAIN = 250.0
LEARNABLE_CUTOFF = 0.5


def _backbone_weights(seed: int = 2024) -> Tuple[np.ndarray, np.ndarray]:
    """Deterministic conv weights: 4 oriented edge/blob filters + 4 seeded random ones."""
    rng = np.random.default_rng(seed)
    weight = np.zeros((FEATURES, 3, 3, 3), dtype=np.float32)
    sobel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32) / 4.0
    laplace = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float32) / 4.0
    mean = np.full((3, 3), 1.0 / 9.0, dtype=np.float32)
    for c in range(3):
        weight[0, c] = sobel_x / 3.0
        weight[1, c] = sobel_x.T / 3.0
        weight[2, c] = laplace / 3.0
        weight[3, c] = mean * (1.0 if c == 0 else -0.5)
    weight[4:] = rng.normal(0.0, 0.25, size=(FEATURES - 4, 3, 3, 3)).astype(np.float32)
    bias = np.full((FEATURES,), 0.05, dtype=np.float32)
    return weight, bias


def build_reference_model(
    kind: str = "learnable",
    batch: Optional[int] = None,
    opset: int = 17,
    euclidean_rank: int = 1,
    sample_input: str = DEFAULT_SAMPLE_INPUT,
    golden_input: str = DEFAULT_GOLDEN_INPUT,
    output: str = DEFAULT_OUTPUT,
    fp16_overflow: bool = False,
):
    """Return an ``onnx.ModelProto`` of a reference ChangeNet model.

    ``kind``: ``"learnable"`` ([B,2] logits) or ``"euclidean"`` ([B] distance, or [B,1] with
    ``euclidean_rank=2``). ``batch``: ``None`` for a dynamic batch (``"batch"``), or a static
    N; a static model carries N in its Reshape shape constant, as TAO's static exports do.
    ``opset``: 12 or 17 (the ones TAO exports use).
    ``fp16_overflow``: plant a float16 overflow in the head (see :func:`_plant_fp16_overflow`);
    the float32 output is bit-identical, the default graph is unchanged.
    """
    if kind not in ("learnable", "euclidean"):
        raise ValueError("kind must be 'learnable' or 'euclidean', not {!r}".format(kind))
    if opset not in (12, 13, 14, 15, 16, 17):
        raise ValueError("opset must be between 12 and 17 (ReduceMean takes axes as an attribute)")
    if batch is not None and batch < 1:
        raise ValueError("a static batch must be positive")
    if euclidean_rank not in (1, 2):
        raise ValueError("euclidean_rank must be 1 or 2")

    weight, bias = _backbone_weights()
    batch_dim = "batch" if batch is None else batch
    inits = [
        numpy_helper.from_array(weight, "backbone.conv.weight"),
        numpy_helper.from_array(bias, "backbone.conv.bias"),
        # A static export bakes the batch into the flatten shape; a dynamic one uses -1.
        numpy_helper.from_array(
            np.array([batch if batch is not None else -1, EMBED_DIM], dtype=np.int64), "embed.shape"
        ),
    ]
    nodes = []
    for tag, name in (("sample", sample_input), ("golden", golden_input)):
        nodes += [
            helper.make_node("AveragePool", [name], [tag + ".pool1"], kernel_shape=[4, 4], strides=[4, 4]),
            helper.make_node(
                "Conv",
                [tag + ".pool1", "backbone.conv.weight", "backbone.conv.bias"],
                [tag + ".conv"],
                pads=[1, 1, 1, 1],
                kernel_shape=[3, 3],
            ),
            helper.make_node("Relu", [tag + ".conv"], [tag + ".relu"]),
            helper.make_node("AveragePool", [tag + ".relu"], [tag + ".pool2"], kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("Reshape", [tag + ".pool2", "embed.shape"], [tag + ".embedding"]),
        ]
    nodes += [
        helper.make_node("Sub", ["sample.embedding", "golden.embedding"], ["head.diff"]),
        helper.make_node("Mul", ["head.diff", "head.diff"], ["head.sq"]),
    ]
    if kind == "euclidean":
        keep = 1 if euclidean_rank == 2 else 0
        nodes += [
            helper.make_node("ReduceMean", ["head.sq"], ["head.mean_sq"], axes=[1], keepdims=keep),
            helper.make_node("Sqrt", ["head.mean_sq"], [output]),
        ]
        out_shape = [batch_dim] if euclidean_rank == 1 else [batch_dim, 1]
        cutoff = EUCLIDEAN_CUTOFF
    else:
        # logits = [rms, max_abs] @ W + b, with the defect logit rising with the distance
        # and the pass logit falling; max_abs gets a small weight so one strongly changed
        # spot also counts.
        head_w = np.array(
            [[-LEARNABLE_GAIN / 2, LEARNABLE_GAIN / 2], [-0.1, 0.1]], dtype=np.float32
        )
        offset = LEARNABLE_GAIN * EUCLIDEAN_CUTOFF / 2 + 0.05
        head_b = np.array([offset, -offset], dtype=np.float32)
        inits += [numpy_helper.from_array(head_w, "head.fc.weight"), numpy_helper.from_array(head_b, "head.fc.bias")]
        nodes += [
            helper.make_node("ReduceMean", ["head.sq"], ["head.mean_sq"], axes=[1], keepdims=1),
            helper.make_node("Sqrt", ["head.mean_sq"], ["head.rms"]),
            helper.make_node("Abs", ["head.diff"], ["head.abs"]),
            helper.make_node("ReduceMax", ["head.abs"], ["head.max_abs"], axes=[1], keepdims=1),
            helper.make_node("Concat", ["head.rms", "head.max_abs"], ["head.features"], axis=1),
            helper.make_node("Gemm", ["head.features", "head.fc.weight", "head.fc.bias"], [output]),
        ]
        out_shape = [batch_dim, 2]
        cutoff = LEARNABLE_CUTOFF

    if fp16_overflow:
        nodes, scale_inits = _plant_fp16_overflow(nodes)
        inits += scale_inits

    image_shape = [batch_dim] + list(INPUT_SHAPE)
    graph = helper.make_graph(
        nodes,
        "changenet_reference_{}".format(kind),
        [
            helper.make_tensor_value_info(sample_input, TensorProto.FLOAT, image_shape),
            helper.make_tensor_value_info(golden_input, TensorProto.FLOAT, image_shape),
        ],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, out_shape)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="changenet-trt")
    # Keep the IR version loadable by the oldest onnxruntime we support (JetPack 5 era).
    model.ir_version = 7 if opset <= 12 else 8
    helper.set_model_props(model, {META_CUTOFF: repr(cutoff), META_PREPROCESS: "tao"})
    return model


#: Power-of-two scale of the planted overflow: |diff| > 1/16 (every real pair has some, the
#: synthetic PASS pairs included) squares to more than 65504, while float32 results stay
#: bit-identical (power-of-two scaling is exact).
OVERFLOW_SCALE = 4096.0
#: Names of the nodes planted by ``fp16_overflow=True``.
OVERFLOW_NODES = ("overflow/scale_up", "overflow/square", "overflow/scale_down")


def _plant_fp16_overflow(nodes):
    """Replace ``sq = diff * diff`` by ``((diff * 4096) * (diff * 4096)) * 4096**-2``.

    ``head.sq_scaled`` (produced by the node ``overflow/square``) then exceeds the float16
    range on real pairs, as LayerNorm variances do in FP16 transformer engines; its consumer
    ``overflow/scale_down`` must read it in float32 too. Returns ``(nodes, initializers)``.
    """
    out = []
    for node in nodes:
        if node.op_type == "Mul" and list(node.output) == ["head.sq"]:
            out += [
                helper.make_node("Mul", ["head.diff", "overflow.scale"], ["head.diff_scaled"], name=OVERFLOW_NODES[0]),
                helper.make_node("Mul", ["head.diff_scaled", "head.diff_scaled"], ["head.sq_scaled"], name=OVERFLOW_NODES[1]),
                helper.make_node("Mul", ["head.sq_scaled", "overflow.unscale"], ["head.sq"], name=OVERFLOW_NODES[2]),
            ]
        else:
            out.append(node)
    inits = [
        numpy_helper.from_array(np.array(OVERFLOW_SCALE, dtype=np.float32), "overflow.scale"),
        numpy_helper.from_array(np.array(OVERFLOW_SCALE ** -2, dtype=np.float32), "overflow.unscale"),
    ]
    return out, inits


def write_reference_model(path: Union[str, "os.PathLike[str]"], **kwargs) -> str:
    """Build a reference model (see :func:`build_reference_model`) and save it to ``path``."""


    path = check_output_file(path, what="reference model file")
    model = build_reference_model(**kwargs)
    atomic_write(path, model.SerializeToString())
    return path
