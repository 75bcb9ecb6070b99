"""A compact ChangeNet-Classification graph with the node patterns of TAO 7.3.0's own export.

The reference model (reference.py) is a clean graph; TAO's export is not. TAO exports
``ChangeNetClassify`` (FAN-hybrid backbone) with PyTorch's TorchScript exporter, constant folding
on, a static batch of 16 by the shipped spec (``cv/visual_changenet/scripts/export.py``,
``utils/onnx_export.py`` of nvidia-tao-pytorch 7.3.0), and the graph then carries:

* the batch baked into Reshape shapes (``x.reshape(B, N, heads, d)`` -> ``[16, N, h, d]``),
  into the Tile repeats of the Fourier position encoding (``pos.repeat(B, 1, 1, 1)`` in
  ``backbone_v2/fan.py`` PositionalEncodingFourier -> Tile ``[16, 1, 1, 1]``) and into the
  Expand of the class token (``cls_token.expand(B, -1, -1)`` -> Equal/Where over
  ``[16, -1, -1]`` -> Expand), once per Siamese branch;
* 16s that are NOT the batch next to ones that are: the learnable decoder's
  ``reshape(B, -1, H/8, W/8)`` -> ``[16, -1, 64, 16]`` (the last 16 = W/8), 16-channel shapes,
  the position encoding's ``[1, 32, 8, 16]`` (16 = its hidden size);
* the ConvNeXt stem's channel-first LayerNorm (``backbone_v2/convnext_utils.py`` LayerNorm2d:
  ``torch.var_mean(x, dim=1)``), exported as ReduceMean plus the unbiased N/(N-1) factor
  computed from the tensor's shape: Shape -> Gather -> ReduceProd -> Cast(to=FLOAT);
* layer scale initialised to 1e-6 (ConvNeXt ``ls_init_value``), GELU as Erf, the position
  encoding's Sin/Cos computed in the graph (the exporter does not fold them), bilinear Resize,
  LayerNormalization at opset 17 and its ReduceMean/Sub/Pow/Sqrt/Div decomposition at opset 12
  (TAO 5.x exported opset 12 without constant folding: the batch stays a scalar Constant that
  Unsqueeze/Concat turn into shapes, and ``expand`` keeps its ConstantOfShape/Mul/Equal/Where
  chain).

A dynamic export (``batch=None``) computes the same batch values from ``Shape(input)[0]``
(Gather, Unsqueeze, Concat), as the exporter does with a dynamic axis.

It is tiny (a few hundred KB, milliseconds per pair) and deterministic. Its weights are chosen,
not trained, so that identical images give identical features and the heads measure feature
change: the learnable decoder's difference modules compute ``relu(+-(f_sample - f_golden))``
and the classifier turns their mean into logits; the euclidean head is a random projection of
the features (distances roughly kept). So its scores separate changed from unchanged pairs.

Graph per image (shared weights; sizes at 512x128)::

    Conv 4x4/4 3->8 -> LayerNorm2d (var_mean)                  [B,8,128,32]    c1
    ConvNeXt block (dw 7x7, LayerNorm2d, 1x1, GELU, 1x1, gamma 1e-6, residual)
    LayerNorm2d, Conv 2x2/2 8->16                             [B,16,64,16]    c2
    Conv 2x2/2 16->16, Reshape [B,16,256], Transpose          tokens [B,256,16]
    + Fourier position encoding (Sin/Cos, Conv 1x1, Tile [B,1,1,1], Reshape [B,-1,256])
    FAN-like block (LayerNorm, 2-head attention with Reshape [B,256,2,8], MLP, GELU)
    c3 = Reshape [B,-1,32,8] of the tokens                     [B,16,32,8]
    Expand(cls_token, [B,-1,-1]) (Equal/Where), Concat, class-token mixing
    c4 = Reshape [B,-1,32,8] of the patch tokens               [B,16,32,8]

Heads: ``learnable`` (TAO's decoder shape: per level a Linear, Reshape ``[B,-1,h,w]``,
difference modules on Concat, Resize x2 coarse to fine, Concat, Conv 1x1, Reshape ``[B,-1]``,
Gemm -> ``[B,2]``) or ``euclidean`` (Reshape ``[B,-1]``, Gemm to an 8-d embedding per image,
pairwise L2 distance -> ``[B]``).
"""

import math
import os
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import onnx
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
C1, C2, DIM, HEADS, POS_HIDDEN, DECODER_DIM, EMBEDDING = 8, 16, 16, 2, 16, 8, 8
LAYER_SCALE = 1e-6  # ConvNeXt ls_init_value (backbone_v2/convnext_utils.py)
LN_EPS = 1e-6
META_DESCRIPTION = "changenet_trt.model"

# Cutoffs chosen on the synthetic PCB data set (changenet_trt/data/synth.py, 200 pairs, seed 7):
# about 1% FPR and 65% defect capture for both heads, AUC 0.93 (weights chosen, not trained;
# tests/models/test_tao_like.py checks that the scores separate).
EUCLIDEAN_CUTOFF = 0.65
LEARNABLE_CUTOFF = 0.5
# learnable: defect logit - pass logit = GAIN * (mean |feature change| - CHANGE_CENTRE)
LEARNABLE_GAIN = 40.0
CHANGE_CENTRE = 0.15


class _Graph:
    """Nodes and initialisers of one export; per-op naming like PyTorch's (``/scope/Op_n``)."""

    def __init__(self, opset: int, batch: Optional[int], folded: bool, seed: int) -> None:
        self.helper, self.numpy_helper = helper, numpy_helper
        self.opset, self.batch, self.folded = opset, batch, folded
        self.rng = np.random.default_rng(seed)
        self.nodes: List = []
        self.inits: Dict[str, object] = {}
        self.counts: Dict[str, int] = {}
        self.batch_of: Dict[str, str] = {}  # image input -> its dynamic batch [1] int64

    def _name(self, scope: str, op: str) -> str:
        key = scope + "/" + op
        n = self.counts.get(key, 0)
        self.counts[key] = n + 1
        return "{}/{}{}".format(scope, op, "_{}".format(n) if n else "")

    def op(self, op: str, inputs: Sequence[str], scope: str, **attrs) -> str:
        name = self._name(scope, op)
        out = name + "_output_0"
        self.nodes.append(self.helper.make_node(op, list(inputs), [out], name=name, **attrs))
        return out

    def const(self, value: np.ndarray, scope: str, name: Optional[str] = None) -> str:
        """A constant: an initializer when the exporter folded it, else a Constant node (TAO 5)."""
        value = np.asarray(value)
        if self.folded or value.dtype.kind == "f" and value.size > 1:
            key = name or "{}/Constant_{}".format(scope, len(self.inits))
            if key not in self.inits:
                self.inits[key] = self.numpy_helper.from_array(value, key)
            return key
        node = self._name(scope, "Constant")
        out = node + "_output_0"
        self.nodes.append(self.helper.make_node(
            "Constant", [], [out], name=node, value=self.numpy_helper.from_array(value, out)))
        return out

    def param(self, name: str, value: np.ndarray) -> str:
        if name not in self.inits:
            self.inits[name] = self.numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)
        return name

    def weight(self, name: str, shape: Sequence[int], fan_in: int) -> str:
        if name not in self.inits:
            std = np.float32(1.0 / np.sqrt(max(fan_in, 1)))
            self.param(name, self.rng.standard_normal(tuple(shape), dtype=np.float32) * std)
        return name

    def scalar(self, value: float, scope: str) -> str:
        return self.const(np.array(value, dtype=np.float32), scope)

    def unsqueeze(self, x: str, axes: Sequence[int], scope: str) -> str:
        if self.opset >= 13:
            return self.op("Unsqueeze", [x, self.const(np.array(axes, np.int64), scope)], scope)
        return self.op("Unsqueeze", [x], scope, axes=list(axes))

    # -- the batch, as the exporter writes it --------------------------------------------------
    def batch_shape(self, image: str, rest: Sequence[int], scope: str) -> str:
        """``[B] + rest`` int64: a constant with the static batch, else Shape(image)[0] concatenated."""
        if self.batch is not None and self.folded:
            return self.const(np.array([self.batch] + list(rest), np.int64), scope)
        if self.batch is not None:
            # unfolded (TAO 5.x): the traced int B stays a scalar Constant, unsqueezed and concatenated
            first = self.unsqueeze(self.const(np.array(self.batch, np.int64), scope), [0], scope)
            return self.op("Concat", [first, self.const(np.array(rest, np.int64), scope)], scope, axis=0)
        if image not in self.batch_of:
            shape = self.op("Shape", [image], scope)
            first = self.op("Gather", [shape, self.const(np.array(0, np.int64), scope)], scope, axis=0)
            self.batch_of[image] = self.unsqueeze(first, [0], scope)
        return self.op("Concat", [self.batch_of[image], self.const(np.array(rest, np.int64), scope)], scope, axis=0)

    def reshape(self, x: str, image: str, rest: Sequence[int], scope: str) -> str:
        return self.op("Reshape", [x, self.batch_shape(image, rest, scope)], scope)

    # -- layers ---------------------------------------------------------------------------------
    def conv(self, x: str, w: str, c_in: int, c_out: int, kernel: int, scope: str, stride: int = 1,
             groups: int = 1, pad: int = 0, value: Optional[np.ndarray] = None) -> str:
        shape = (c_out, c_in // groups, kernel, kernel)
        weight = self.param(w + ".weight", value) if value is not None else \
            self.weight(w + ".weight", shape, c_in // groups * kernel * kernel)
        bias = self.param(w + ".bias", np.zeros((c_out,), np.float32))
        return self.op("Conv", [x, weight, bias], scope, kernel_shape=[kernel, kernel], strides=[stride, stride],
                       pads=[pad] * 4, group=groups, dilations=[1, 1])

    def linear(self, x: str, w: str, n_in: int, n_out: int, scope: str, value: Optional[np.ndarray] = None) -> str:
        """nn.Linear on 3-D input: MatMul with the transposed weight, then Add of the bias."""
        weight = self.param(w + ".weight", value) if value is not None else self.weight(w + ".weight", (n_in, n_out), n_in)
        y = self.op("MatMul", [x, weight], scope)
        return self.op("Add", [self.param(w + ".bias", np.zeros((n_out,), np.float32)), y], scope)

    def gelu(self, x: str, scope: str) -> str:
        """PyTorch's exact GELU below opset 20: x * 0.5 * (1 + erf(x / sqrt 2))."""
        erf = self.op("Erf", [self.op("Div", [x, self.scalar(math.sqrt(2.0), scope)], scope)], scope)
        one_plus = self.op("Add", [erf, self.scalar(1.0, scope)], scope)
        return self.op("Mul", [self.op("Mul", [x, one_plus], scope), self.scalar(0.5, scope)], scope)

    def layernorm2d_var_mean(self, x: str, w: str, channels: int, scope: str) -> str:
        """LayerNorm2d's ``var_mean`` path: (x - mean) * rsqrt(var * N/(N-1) + eps) * w + b.

        As torch's ``var_mean`` symbolic writes it: the unbiased factor comes from the shape,
        Shape -> Gather(dim 1) -> ReduceProd -> Cast(to=FLOAT), N/(N-1).
        """
        mean = self.op("ReduceMean", [x], scope, axes=[1], keepdims=1)
        count = self.op("ReduceProd", [self.op("Gather", [self.op("Shape", [x], scope),
                                                          self.const(np.array([1], np.int64), scope)], scope, axis=0)],
                        scope, keepdims=0)
        count = self.op("Cast", [count], scope, to=TensorProto.FLOAT)
        centred = self.op("Sub", [x, self.op("ReduceMean", [x], scope, axes=[1], keepdims=1)], scope)
        var = self.op("ReduceMean", [self.op("Mul", [centred, centred], scope)], scope, axes=[1], keepdims=1)
        unbiased = self.op("Div", [count, self.op("Sub", [count, self.scalar(1.0, scope)], scope)], scope)
        var = self.op("Mul", [var, unbiased], scope)
        rstd = self.op("Reciprocal", [self.op("Sqrt", [self.op("Add", [var, self.scalar(LN_EPS, scope)], scope)], scope)],
                       scope)
        y = self.op("Mul", [self.op("Sub", [x, mean], scope), rstd], scope)
        y = self.op("Mul", [y, self.param(w + ".weight_chw", np.ones((channels, 1, 1), np.float32))], scope)
        return self.op("Add", [y, self.param(w + ".bias_chw", np.zeros((channels, 1, 1), np.float32))], scope)

    def layernorm(self, x: str, w: str, channels: int, scope: str) -> str:
        """nn.LayerNorm over the last axis: the op at opset 17, PyTorch's decomposition below."""
        scale = self.param(w + ".weight", np.ones((channels,), np.float32))
        bias = self.param(w + ".bias", np.zeros((channels,), np.float32))
        if self.opset >= 17:
            return self.op("LayerNormalization", [x, scale, bias], scope, axis=-1, epsilon=LN_EPS)
        mean = self.op("ReduceMean", [x], scope, axes=[-1], keepdims=1)
        centred = self.op("Sub", [x, mean], scope)
        var = self.op("ReduceMean", [self.op("Pow", [centred, self.scalar(2.0, scope)], scope)], scope, axes=[-1],
                      keepdims=1)
        std = self.op("Sqrt", [self.op("Add", [var, self.scalar(LN_EPS, scope)], scope)], scope)
        return self.op("Add", [self.op("Mul", [self.op("Div", [centred, std], scope), scale], scope), bias], scope)

    def expand_batch(self, x: str, image: str, rank: int, scope: str) -> str:
        """``x.expand(B, -1, ..., -1)`` as torch's symbolic writes it: Where(size == -1, 1, size)."""
        size = self.batch_shape(image, [-1] * (rank - 1), scope)
        if self.folded:
            ones = self.const(np.ones((rank,), np.int64), scope)
            neg_ones = self.const(-np.ones((rank,), np.int64), scope)
        else:
            ones = self.op("ConstantOfShape", [self.op("Shape", [size], scope)], scope,
                           value=self.numpy_helper.from_array(np.array([1], np.int64)))
            neg_ones = self.op("Mul", [ones, self.const(np.array(-1, np.int64), scope)], scope)
        size = self.op("Where", [self.op("Equal", [size, neg_ones], scope), ones, size], scope)
        return self.op("Expand", [x, size], scope)


# -- the backbone --------------------------------------------------------------------------------
def _position_encoding(g: _Graph, image: str, height: int, width: int, scope: str) -> str:
    """FAN's PositionalEncodingFourier(B, H, W) -> [B, DIM, H, W]: the grid is a folded constant,
    Sin/Cos run in the graph, then a 1x1 Conv and Tile [B,1,1,1] (``pos.repeat(B, 1, 1, 1)``)."""
    eps, scale, temperature = 1e-6, 2 * math.pi, 10000.0
    y_embed = np.repeat(np.arange(1, height + 1, dtype=np.float32).reshape(1, height, 1), width, axis=2)
    x_embed = np.repeat(np.arange(1, width + 1, dtype=np.float32).reshape(1, 1, width), height, axis=1)
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = np.arange(POS_HIDDEN, dtype=np.float32)
    dim_t = (temperature ** (2 * np.floor(dim_t / 2) / POS_HIDDEN)).astype(np.float32)
    parts = []
    for embed in (y_embed, x_embed):
        pos = (embed[:, :, :, None] / dim_t).astype(np.float32)
        sin = g.unsqueeze(g.op("Sin", [g.const(np.ascontiguousarray(pos[..., 0::2]), scope)], scope), [4], scope)
        cos = g.unsqueeze(g.op("Cos", [g.const(np.ascontiguousarray(pos[..., 1::2]), scope)], scope), [4], scope)
        stacked = g.op("Concat", [sin, cos], scope, axis=4)  # torch.stack(dim=4)
        # flatten(3): [1, H, W, hidden] -- its shape holds 16 (the hidden size), not the batch
        parts.append(g.op("Reshape", [stacked, g.const(np.array([1, height, width, POS_HIDDEN], np.int64), scope)],
                          scope))
    pos = g.op("Transpose", [g.op("Concat", parts, scope, axis=3)], scope, perm=[0, 3, 1, 2])
    pos = g.conv(pos, "backbone.pos_embed.token_projection", 2 * POS_HIDDEN, DIM, 1, scope)
    return g.op("Tile", [pos, g.batch_shape(image, [1, 1, 1], scope)], scope)


def _attention(g: _Graph, x: str, image: str, tokens: int, scope: str) -> str:
    """Multi-head self-attention as FAN's TokenMixing: Reshape [B,N,h,d] carries the batch."""
    head_dim = DIM // HEADS
    q = g.linear(x, "backbone.blocks.0.attn.q", DIM, DIM, scope)
    q = g.op("Transpose", [g.reshape(q, image, [tokens, HEADS, head_dim], scope)], scope, perm=[0, 2, 1, 3])
    kv = g.linear(x, "backbone.blocks.0.attn.kv", DIM, 2 * DIM, scope)
    kv = g.op("Transpose", [g.reshape(kv, image, [-1, 2, HEADS, head_dim], scope)], scope, perm=[2, 0, 3, 1, 4])
    k = g.op("Gather", [kv, g.const(np.array(0, np.int64), scope)], scope, axis=0)
    v = g.op("Gather", [kv, g.const(np.array(1, np.int64), scope)], scope, axis=0)
    attn = g.op("MatMul", [g.op("Mul", [q, g.scalar(head_dim ** -0.5, scope)], scope),
                           g.op("Transpose", [k], scope, perm=[0, 1, 3, 2])], scope)
    y = g.op("MatMul", [g.op("Softmax", [attn], scope, axis=-1), v], scope)
    y = g.reshape(g.op("Transpose", [y], scope, perm=[0, 2, 1, 3]), image, [tokens, DIM], scope)
    return g.linear(y, "backbone.blocks.0.attn.proj", DIM, DIM, scope)


def _backbone(g: _Graph, image: str, branch: str) -> List[str]:
    """Feature pyramid of one image: c1 [B,8,128,32], c2 [B,16,64,16], c3 and c4 [B,16,32,8]."""
    _, height, width = INPUT_SHAPE
    s = "/backbone" + branch
    x = g.conv(image, "backbone.stem.0", 3, C1, 4, s + "/stem", stride=4)
    x = g.layernorm2d_var_mean(x, "backbone.stem.1", C1, s + "/stem/norm")
    b = s + "/stages.0/blocks.0"
    y = g.conv(x, "backbone.stages.0.blocks.0.conv_dw", C1, C1, 7, b, groups=C1, pad=3)
    y = g.layernorm2d_var_mean(y, "backbone.stages.0.blocks.0.norm", C1, b + "/norm")
    y = g.gelu(g.conv(y, "backbone.stages.0.blocks.0.mlp.fc1", C1, 4 * C1, 1, b), b)
    y = g.conv(y, "backbone.stages.0.blocks.0.mlp.fc2", 4 * C1, C1, 1, b)
    y = g.op("Mul", [y, g.param("backbone.stages.0.blocks.0.gamma", np.full((C1, 1, 1), LAYER_SCALE, np.float32))], b)
    c1 = g.op("Add", [y, x], b)
    d = s + "/stages.1/downsample"
    x = g.layernorm2d_var_mean(c1, "backbone.stages.1.downsample.0", C1, d + "/norm")
    c2 = g.conv(x, "backbone.stages.1.downsample.1", C1, C2, 2, d, stride=2)
    grid_h, grid_w = height // 16, width // 16
    tokens = grid_h * grid_w
    p = s + "/patch_embed"
    x = g.conv(c2, "backbone.patch_embed.proj", C2, DIM, 2, p, stride=2)
    x = g.op("Transpose", [g.reshape(x, image, [DIM, tokens], p)], p, perm=[0, 2, 1])  # flatten(2).transpose
    pe = s + "/pos_embed"
    pos = _position_encoding(g, image, grid_h, grid_w, pe)
    pos = g.op("Transpose", [g.reshape(pos, image, [-1, tokens], pe)], pe, perm=[0, 2, 1])
    x = g.op("Add", [x, pos], s)
    blk = s + "/blocks.0"
    x = g.op("Add", [x, _attention(g, g.layernorm(x, "backbone.blocks.0.norm1", DIM, blk), image, tokens, blk)], blk)
    y = g.gelu(g.linear(g.layernorm(x, "backbone.blocks.0.norm2", DIM, blk), "backbone.blocks.0.mlp.fc1", DIM,
                        2 * DIM, blk), blk)
    y = g.linear(y, "backbone.blocks.0.mlp.fc2", 2 * DIM, DIM, blk)
    x = g.op("Add", [x, g.op("Mul", [g.param("backbone.blocks.0.gamma2", np.full((DIM,), 0.5, np.float32)), y], blk)],
             blk)
    c3 = g.reshape(g.op("Transpose", [x], blk, perm=[0, 2, 1]), image, [-1, grid_h, grid_w], blk)
    c = s + "/cls"
    cls = g.param("backbone.cls_token", g.rng.standard_normal((1, 1, DIM), dtype=np.float32) * np.float32(0.02))
    x = g.op("Concat", [g.expand_batch(cls, image, 3, c), x], c, axis=1)
    x = g.layernorm(x, "backbone.norm", DIM, c)
    first = g.op("Slice", [x, g.const(np.array([0], np.int64), c), g.const(np.array([1], np.int64), c),
                           g.const(np.array([1], np.int64), c)], c)
    rest = g.op("Slice", [x, g.const(np.array([1], np.int64), c), g.const(np.array([tokens + 1], np.int64), c),
                          g.const(np.array([1], np.int64), c)], c)
    x = g.op("Add", [rest, g.op("Mul", [first, g.scalar(0.1, c)], c)], c)
    c4 = g.reshape(g.op("Transpose", [x], c, perm=[0, 2, 1]), image, [-1, grid_h, grid_w], c)
    return [c1, c2, c3, c4]


# -- the heads -----------------------------------------------------------------------------------
def _learnable_head(g: _Graph, sample: List[str], golden: List[str], sample_input: str, golden_input: str,
                    output: str) -> None:
    """TAO's ChangeNetClassifyDecoder shape; the difference modules measure feature change."""
    _, height, width = INPUT_SHAPE
    e = DECODER_DIM
    channels, strides = [C1, C2, DIM, DIM], [4, 8, 16, 16]
    scope = "/decode_head"
    maps = []
    for feats, image in ((sample, sample_input), (golden, golden_input)):
        level = []
        for i, (fmap, c, stride) in enumerate(zip(feats, channels, strides)):
            lc = "{}/linear_c{}".format(scope, i + 1)
            h, w = height // stride, width // stride
            y = g.op("Transpose", [g.op("Reshape", [fmap, g.const(np.array([0, c, -1], np.int64), lc)], lc)], lc,
                     perm=[0, 2, 1])
            y = g.op("Transpose", [g.linear(y, "decode_head.linear_c{}.proj".format(i + 1), c, e, lc)], lc,
                     perm=[0, 2, 1])
            # reshape(B, -1, H, W): [16, -1, h, w] in a static export; for c2 [16, -1, 64, 16], 16 = W/8
            level.append(g.reshape(y, image, [-1, h, w], lc))
        maps.append(level)
    # difference module: Conv 3x3 over Concat(a, b) -> ReLU -> Conv 3x3 -> ReLU, with weights that
    # give relu(a - b) and relu(b - a) (centre tap): identical features give exactly zero
    first = np.zeros((e, 2 * e, 3, 3), np.float32)
    for k in range(e):
        sign = 1.0 if k % 2 == 0 else -1.0
        first[k, k, 1, 1], first[k, e + k, 1, 1] = sign, -sign
    second = np.zeros((e, e, 3, 3), np.float32)
    second[np.arange(e), np.arange(e), 1, 1] = 1.0

    def diff(i: int) -> str:
        dc = "{}/diff_c{}".format(scope, i + 1)
        y = g.op("Concat", [maps[0][i], maps[1][i]], dc, axis=1)
        y = g.op("Relu", [g.conv(y, "decode_head.diff_c{}.0".format(i + 1), 2 * e, e, 3, dc, pad=1, value=first)], dc)
        return g.op("Relu", [g.conv(y, "decode_head.diff_c{}.2".format(i + 1), e, e, 3, dc, pad=1, value=second)], dc)

    def upsample(x: str, factor: int, at: str) -> str:
        roi = g.const(np.zeros((0,), np.float32), at)
        scales = g.const(np.array([1, 1, factor, factor], np.float32), at)
        return g.op("Resize", [x, roi, scales], at, mode="linear", coordinate_transformation_mode="pytorch_half_pixel")

    c4 = diff(3)
    c3 = g.op("Add", [diff(2), c4], scope)
    c2 = g.op("Add", [diff(1), upsample(c3, 2, scope)], scope)
    c1 = g.op("Add", [diff(0), upsample(c2, 2, scope)], scope)
    fused = g.op("Concat", [upsample(c4, 4, scope), upsample(c3, 4, scope), upsample(c2, 2, scope), c1], scope, axis=1)
    fuse_w = np.full((1, 4 * e, 1, 1), 1.0 / (4 * e), np.float32)
    fused = g.conv(fused, "decode_head.linear_fuse.0", 4 * e, 1, 1, scope + "/linear_fuse", value=fuse_w)
    flat_dim = (height // 4) * (width // 4)
    flat = g.reshape(fused, sample_input, [-1], scope + "/classifier")  # _c.reshape(_c.size(0), -1)
    weight = np.zeros((2, flat_dim), np.float32)
    weight[0], weight[1] = -LEARNABLE_GAIN / (2 * flat_dim), LEARNABLE_GAIN / (2 * flat_dim)
    offset = LEARNABLE_GAIN * CHANGE_CENTRE / 2
    bias = np.array([offset, -offset], np.float32)
    logits = g.op("Gemm", [flat, g.param("decode_head.classifier.weight", weight),
                           g.param("decode_head.classifier.bias", bias)], scope + "/classifier",
                  alpha=1.0, beta=1.0, transB=1)
    g.nodes.append(g.helper.make_node("Identity", [logits], [output], name="/Identity"))


def _euclidean_head(g: _Graph, sample: List[str], golden: List[str], sample_input: str, golden_input: str,
                    output: str) -> None:
    """Per image: Reshape [B,-1] of c4, Gemm to an embedding; output = ||a - b + 1e-6||_2 [B]."""
    _, height, width = INPUT_SHAPE
    flat_dim = DIM * (height // 16) * (width // 16)
    embeddings = []
    for feats, image in ((sample, sample_input), (golden, golden_input)):
        scope = "/fc" if image == sample_input else "/fc_1"
        flat = g.reshape(feats[3], image, [-1], scope)
        weight = g.weight("fc.weight", (EMBEDDING, flat_dim), flat_dim)
        bias = g.param("fc.bias", np.zeros((EMBEDDING,), np.float32))
        embeddings.append(g.op("Gemm", [flat, weight, bias], scope, alpha=1.0, beta=1.0, transB=1))
    scope = "/pairwise_distance"
    d = g.op("Add", [g.op("Sub", embeddings, scope), g.scalar(1e-6, scope)], scope)
    g.nodes.append(g.helper.make_node("ReduceL2", [d], [output], name=scope + "/ReduceL2", axes=[-1], keepdims=0))


# -- public API ----------------------------------------------------------------------------------
def build_tao_like_model(
    kind: str = "learnable",
    batch: Optional[int] = 16,
    opset: int = 17,
    folded: Optional[bool] = None,
    seed: int = 0,
    sample_input: str = DEFAULT_SAMPLE_INPUT,
    golden_input: str = DEFAULT_GOLDEN_INPUT,
    output: str = DEFAULT_OUTPUT,
):
    """Return an ``onnx.ModelProto`` with TAO 7.3.0's export patterns (see the module doc).

    ``kind``: ``learnable`` (``[B,2]`` logits) or ``euclidean`` (``[B]`` distance). ``batch``:
    a static N baked in as TAO's default export does (16), or ``None`` for a dynamic batch.
    ``opset``: 17 (TAO 5.5+) or 12 (TAO 5.0-5.3). ``folded``: constant folding as the exporter
    ran it; default True at opset 17, False at 12 (TAO 5.x), where shape constants stay
    Constant nodes. ``seed``: the random weights' seed.
    """
    if kind not in ("learnable", "euclidean"):
        raise ValueError("kind must be 'learnable' or 'euclidean', not {!r}".format(kind))
    if opset not in (12, 17):
        raise ValueError("opset must be 12 or 17 (TAO's export opsets), not {!r}".format(opset))
    if batch is not None and batch < 1:
        raise ValueError("a static batch must be positive")
    g = _Graph(opset, batch, opset >= 17 if folded is None else bool(folded), seed)
    sample = _backbone(g, sample_input, "")
    golden = _backbone(g, golden_input, "_1")  # the shared module's second call, as torch names it
    if kind == "learnable":
        _learnable_head(g, sample, golden, sample_input, golden_input, output)
        out_shape: List[Union[int, str]] = [2]
        cutoff = LEARNABLE_CUTOFF
    else:
        _euclidean_head(g, sample, golden, sample_input, golden_input, output)
        out_shape = []
        cutoff = EUCLIDEAN_CUTOFF
    batch_dim: Union[int, str] = "batch" if batch is None else batch
    graph = helper.make_graph(
        g.nodes,
        "main_graph",
        [helper.make_tensor_value_info(sample_input, TensorProto.FLOAT, [batch_dim] + list(INPUT_SHAPE)),
         helper.make_tensor_value_info(golden_input, TensorProto.FLOAT, [batch_dim] + list(INPUT_SHAPE))],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [batch_dim] + out_shape)],
        initializer=list(g.inits.values()),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="pytorch")
    model.ir_version = 7 if opset <= 12 else 8
    helper.set_model_props(model, {
        META_CUTOFF: repr(cutoff),
        META_PREPROCESS: "tao",
        META_DESCRIPTION: "TAO-export-like ChangeNet ({}, {}, opset {}): test graph with TAO's node patterns".format(
            kind, "static batch {}".format(batch) if batch else "dynamic batch", opset),
    })
    onnx.checker.check_model(model)
    return model


def write_tao_like_model(path: Union[str, "os.PathLike[str]"], **kwargs) -> str:
    """Build a TAO-like model (see :func:`build_tao_like_model`) and save it to ``path``."""
    path = check_output_file(path, what="model file")
    atomic_write(path, build_tao_like_model(**kwargs).SerializeToString())
    return path
