"""A compute-realistic ChangeNet-Classification ONNX model: FAN-hybrid-small-like, random weights.

The reference model (reference.py) is tiny, so it says nothing about speed. This one has the
structure and size of TAO's ``fan_small_12_p4_hybrid`` ChangeNet classifier (TAO's
nvidia_tao_pytorch visual_changenet sources), with seeded random weights, so benchmarks see
the real model's compute and op mix. Its scores mean nothing.

Per image (shared weights, run once on the sample and once on the golden image)::

    [B,3,512,128] -> ConvNeXt stem: Conv 4x4/4 -> LayerNorm          128 ch, 1/4   (c1)
      -> 3 ConvNeXt blocks (dw 7x7, LayerNorm, 1x1 x4, GELU, 1x1)
      -> LayerNorm, Conv 2x2/2, 3 ConvNeXt blocks                     256 ch, 1/8   (c2)
      -> Conv 2x2/2 to 384-d tokens + positional encoding              256 tokens, 1/16
      -> 10 FAN blocks: LayerNorm, 8-head self-attention (Softmax),
         LayerNorm, channel attention (Softmax, Sigmoid) gating an MLP with a depth-wise
         conv pair (GELU, BatchNorm)                                   384 ch, 1/16  (c3)
      -> 2 class-attention blocks (cls token, LayerNorm, Softmax, GELU MLP)  (c4)

Heads (TAO's sizes):

* ``learnable`` (architecture 2): per level a Linear to 256, difference modules
  (Concat, Conv 3x3, ReLU, BatchNorm, Conv 3x3, ReLU) fused coarse to fine with bilinear
  Resize, Concat of the 4 levels, Conv 1x1 + BatchNorm, then the classifier
  Linear(256*128*32 -> 30), ReLU, BatchNorm, Linear(30 -> 30), ReLU, BatchNorm,
  Linear(30 -> 2): output ``[B, 2]`` logits.
* ``euclidean`` (architecture 1): per image Flatten(c4) -> Linear(384*32*8 -> 512), ReLU,
  BatchNorm, Linear(512 -> 512), ReLU, BatchNorm, Linear(512 -> 5); output ``[B]`` = the
  pairwise L2 distance of the two embeddings.

GELU is built from Erf (x * 0.5 * (1 + erf(x / sqrt 2))), as PyTorch exports it; LayerNorm is
``LayerNormalization`` at opset 17 and decomposed (ReduceMean, Sub, Pow, Sqrt, Div) at opset
12, as TAO's two export opsets do. :func:`count_macs` counts the multiply-accumulates of the
graph from its inferred shapes.
"""

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

from changenet_trt.contract import DEFAULT_GOLDEN_INPUT, DEFAULT_OUTPUT, DEFAULT_SAMPLE_INPUT, META_PREPROCESS
from changenet_trt.files import atomic_write, check_output_file

INPUT_SHAPE = (3, 512, 128)
META_DESCRIPTION = "changenet_trt.model"
META_GFLOPS = "changenet_trt.gflops_per_pair"


@dataclass(frozen=True)
class RealisticConfig:
    """Sizes of the generated network (defaults: TAO's fan_small_12_p4_hybrid ChangeNet)."""

    stem_dims: Tuple[int, int] = (128, 256)  # ConvNeXt stages (strides 4 and 8)
    stage_depths: Tuple[int, int] = (3, 3)
    embed_dim: int = 384  # FAN tokens (stride 16)
    depth: int = 10  # FAN blocks
    heads: int = 8
    mlp_ratio: int = 4
    cls_attn_layers: int = 2
    decoder_dim: int = 256  # learnable head: decode_head.decoder_params.embed_dim
    embed_dec: int = 30  # learnable head: classify.embed_dec
    embedding_vectors: int = 5  # euclidean head: classify.embedding_vectors
    euclid_hidden: int = 512  # euclidean head: fc1 width


FAN_HYBRID_SMALL = RealisticConfig()


class _Graph:
    """Collects nodes and initialisers; weights are created once per name (shared by both
    Siamese branches) from one seeded generator."""

    def __init__(self, seed: int, opset: int, batch: Optional[int]) -> None:
        self.helper = helper
        self.numpy_helper = numpy_helper
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.batch = batch
        self.nodes: List = []
        self.inits: Dict[str, object] = {}
        self.count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        if name not in self.inits:
            self.inits[name] = self.numpy_helper.from_array(np.asarray(value), name)
        return name

    def weight(self, name: str, shape: Sequence[int], fan_in: int) -> str:
        """Normal(0, 1/sqrt(fan_in)) float32, so activations keep their scale layer to layer."""
        if name not in self.inits:
            std = 1.0 / np.sqrt(max(fan_in, 1))
            value = self.rng.standard_normal(tuple(shape), dtype=np.float32) * np.float32(std)
            self.inits[name] = self.numpy_helper.from_array(value, name)
        return name

    def fill(self, name: str, shape: Sequence[int], value: float) -> str:
        return self.const(name, np.full(tuple(shape), value, dtype=np.float32))

    def shape(self, name: str, dims: Sequence[int]) -> str:
        """A Reshape target whose first entry is the batch (static N, or -1 when dynamic)."""
        first = self.batch if self.batch is not None else -1
        return self.const(name, np.array([first] + list(dims), dtype=np.int64))

    def op(self, op_type: str, inputs: Sequence[str], tag: str, **attrs) -> str:
        self.count += 1
        out = "{}.{}".format(tag, self.count)
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    # -- layers ------------------------------------------------------------------------------
    def linear(self, x: str, w: str, n_in: int, n_out: int, tag: str) -> str:
        """``x [..., n_in] @ W + b`` as PyTorch exports nn.Linear on 3-D input (MatMul + Add)."""
        y = self.op("MatMul", [x, self.weight(w + ".weight", (n_in, n_out), n_in)], tag)
        return self.op("Add", [y, self.fill(w + ".bias", (n_out,), 0.0)], tag)

    def gemm(self, x: str, w: str, n_in: int, n_out: int, tag: str) -> str:
        """nn.Linear on 2-D input: Gemm with a [n_out, n_in] weight (transB)."""
        return self.op("Gemm", [x, self.weight(w + ".weight", (n_out, n_in), n_in),
                                self.fill(w + ".bias", (n_out,), 0.0)], tag, transB=1)

    def conv(self, x: str, w: str, c_in: int, c_out: int, kernel: int, tag: str, stride: int = 1,
             groups: int = 1, pad: Optional[int] = None) -> str:
        pad = kernel // 2 if pad is None else pad
        weight = self.weight(w + ".weight", (c_out, c_in // groups, kernel, kernel), c_in // groups * kernel * kernel)
        return self.op("Conv", [x, weight, self.fill(w + ".bias", (c_out,), 0.0)], tag,
                       kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4, group=groups)

    def batchnorm(self, x: str, w: str, channels: int, tag: str) -> str:
        return self.op("BatchNormalization", [
            x, self.fill(w + ".weight", (channels,), 1.0), self.fill(w + ".bias", (channels,), 0.0),
            self.fill(w + ".running_mean", (channels,), 0.0), self.fill(w + ".running_var", (channels,), 1.0),
        ], tag, epsilon=1e-5)

    def layernorm(self, x: str, w: str, channels: int, tag: str) -> str:
        """LayerNorm over the last axis (eps 1e-6, as FAN/ConvNeXt)."""
        scale, bias = self.fill(w + ".weight", (channels,), 1.0), self.fill(w + ".bias", (channels,), 0.0)
        if self.opset >= 17:
            return self.op("LayerNormalization", [x, scale, bias], tag, axis=-1, epsilon=1e-6)
        # opset < 17: the decomposition PyTorch exports
        mean = self.op("ReduceMean", [x], tag, axes=[-1], keepdims=1)
        centred = self.op("Sub", [x, mean], tag)
        square = self.op("Pow", [centred, self.const("const.two", np.array(2.0, np.float32))], tag)
        var = self.op("ReduceMean", [square], tag, axes=[-1], keepdims=1)
        std = self.op("Sqrt", [self.op("Add", [var, self.const("const.eps", np.array(1e-6, np.float32))], tag)], tag)
        normed = self.op("Div", [centred, std], tag)
        return self.op("Add", [self.op("Mul", [normed, scale], tag), bias], tag)

    def layernorm2d(self, x: str, w: str, channels: int, tag: str) -> str:
        """LayerNorm over C of an NCHW map (timm's LayerNorm2d: permute, norm, permute back)."""
        nhwc = self.op("Transpose", [x], tag, perm=[0, 2, 3, 1])
        return self.op("Transpose", [self.layernorm(nhwc, w, channels, tag)], tag, perm=[0, 3, 1, 2])

    def gelu(self, x: str, tag: str) -> str:
        """x * 0.5 * (1 + erf(x / sqrt(2))), PyTorch's exact GELU as exported before opset 20."""
        scaled = self.op("Div", [x, self.const("const.sqrt2", np.array(np.sqrt(2.0), np.float32))], tag)
        erf = self.op("Erf", [scaled], tag)
        one_plus = self.op("Add", [erf, self.const("const.one", np.array(1.0, np.float32))], tag)
        return self.op("Mul", [self.op("Mul", [x, one_plus], tag), self.const("const.half", np.array(0.5, np.float32))], tag)

    def scale(self, x: str, w: str, shape: Sequence[int], value: float, tag: str) -> str:
        return self.op("Mul", [x, self.fill(w, shape, value)], tag)

    def resize(self, x: str, factor: int, tag: str) -> str:
        """Bilinear upsampling by ``factor`` (align_corners=False)."""
        roi = self.const("const.roi", np.zeros((0,), np.float32))
        scales = self.const("const.scales{}".format(factor), np.array([1, 1, factor, factor], np.float32))
        return self.op("Resize", [x, roi, scales], tag, mode="linear", coordinate_transformation_mode="half_pixel")


# -- the backbone --------------------------------------------------------------------------------
def _convnext_block(g: _Graph, x: str, w: str, dim: int, ratio: int, tag: str) -> str:
    y = g.conv(x, w + ".dwconv", dim, dim, 7, tag, groups=dim)
    y = g.layernorm2d(y, w + ".norm", dim, tag)
    y = g.conv(y, w + ".mlp.fc1", dim, ratio * dim, 1, tag)
    y = g.gelu(y, tag)
    y = g.conv(y, w + ".mlp.fc2", ratio * dim, dim, 1, tag)
    y = g.op("Mul", [y, g.fill(w + ".gamma", (dim, 1, 1), 0.1)], tag)
    return g.op("Add", [x, y], tag)


def _heads_split(g: _Graph, x: str, tokens: int, dim: int, heads: int, perm: Sequence[int], name: str, tag: str) -> str:
    """[B, N, C] -> Reshape [B, N, h, d] -> Transpose ``perm``."""
    y = g.op("Reshape", [x, g.shape(name, (tokens, heads, dim // heads))], tag)
    return g.op("Transpose", [y], tag, perm=list(perm))


def _token_mixing(g: _Graph, x: str, w: str, cfg: RealisticConfig, tokens: int, tag: str) -> str:
    """FAN's TokenMixing: multi-head self-attention over the tokens."""
    dim, heads = cfg.embed_dim, cfg.heads
    head_dim = dim // heads
    q = _heads_split(g, g.linear(x, w + ".q", dim, dim, tag), tokens, dim, heads, (0, 2, 1, 3), "shape.tokens_heads", tag)
    kv = g.linear(x, w + ".kv", dim, 2 * dim, tag)
    kv = g.op("Reshape", [kv, g.shape("shape.tokens_kv", (tokens, 2, heads, head_dim))], tag)
    kv = g.op("Transpose", [kv], tag, perm=[2, 0, 3, 1, 4])  # [2, B, h, N, d]
    k = g.op("Gather", [kv, g.const("const.index0", np.array(0, np.int64))], tag, axis=0)
    v = g.op("Gather", [kv, g.const("const.index1", np.array(1, np.int64))], tag, axis=0)
    q = g.op("Mul", [q, g.const("const.attn_scale", np.array(head_dim ** -0.5, np.float32))], tag)
    attn = g.op("MatMul", [q, g.op("Transpose", [k], tag, perm=[0, 1, 3, 2])], tag)
    attn = g.op("Softmax", [attn], tag, axis=-1)
    y = g.op("Transpose", [g.op("MatMul", [attn, v], tag)], tag, perm=[0, 2, 1, 3])
    y = g.op("Reshape", [y, g.shape("shape.tokens_dim", (tokens, dim))], tag)
    return g.linear(y, w + ".proj", dim, dim, tag)


def _channel_processing(g: _Graph, x: str, w: str, cfg: RealisticConfig, grid: Tuple[int, int], tag: str) -> str:
    """FAN's ChannelProcessing: channel attention (as TAO exports it) gating an MLP whose hidden
    layer passes a depth-wise conv pair."""
    dim, heads = cfg.embed_dim, cfg.heads
    head_dim, hidden = dim // heads, cfg.mlp_ratio * dim
    tokens = grid[0] * grid[1]
    # attention: softmax over tokens of q and k; k averaged over the head's channels
    q = _heads_split(g, g.linear(x, w + ".q", dim, dim, tag), tokens, dim, heads, (0, 2, 3, 1), "shape.tokens_heads", tag)
    q = g.op("Softmax", [q], tag, axis=-1)  # [B, h, d, N]
    k = _heads_split(g, x, tokens, dim, heads, (0, 2, 3, 1), "shape.tokens_heads", tag)
    k = g.op("Transpose", [g.op("Softmax", [k], tag, axis=-1)], tag, perm=[0, 1, 3, 2])  # [B, h, N, d]
    k = g.op("AveragePool", [k], tag, kernel_shape=[1, head_dim])  # [B, h, N, 1]
    attn = g.op("Sigmoid", [g.op("MatMul", [q, k], tag)], tag)  # [B, h, d, 1]
    attn = g.op("Mul", [attn, g.fill(w + ".temperature", (heads, 1, 1), 1.0)], tag)
    # v: fc1 -> (gamma * dwconv + identity) -> fc2 -> LayerNorm
    h1 = g.linear(x, w + ".mlp_v.fc1", dim, hidden, tag)
    img = g.op("Transpose", [h1], tag, perm=[0, 2, 1])
    img = g.op("Reshape", [img, g.shape("shape.hidden_grid", (hidden, grid[0], grid[1]))], tag)
    dw = g.conv(img, w + ".mlp_v.dwconv.conv1", hidden, hidden, 3, tag, groups=hidden)
    dw = g.batchnorm(g.gelu(dw, tag), w + ".mlp_v.dwconv.bn", hidden, tag)
    dw = g.conv(dw, w + ".mlp_v.dwconv.conv2", hidden, hidden, 3, tag, groups=hidden)
    dw = g.op("Reshape", [dw, g.shape("shape.hidden_tokens", (hidden, tokens))], tag)
    dw = g.op("Transpose", [dw], tag, perm=[0, 2, 1])
    h1 = g.op("Add", [g.scale(dw, w + ".mlp_v.gamma", (hidden,), 0.1, tag), h1], tag)
    v = g.layernorm(g.linear(h1, w + ".mlp_v.fc2", hidden, dim, tag), w + ".norm_v", dim, tag)
    v = _heads_split(g, v, tokens, dim, heads, (0, 2, 3, 1), "shape.tokens_heads", tag)  # [B, h, d, N]
    y = g.op("Transpose", [g.op("Mul", [attn, v], tag)], tag, perm=[0, 3, 1, 2])  # [B, N, h, d]
    return g.op("Reshape", [y, g.shape("shape.tokens_dim", (tokens, dim))], tag)


def _fan_block(g: _Graph, x: str, w: str, cfg: RealisticConfig, grid: Tuple[int, int], tag: str) -> str:
    dim = cfg.embed_dim
    tokens = grid[0] * grid[1]
    y = _token_mixing(g, g.layernorm(x, w + ".norm1", dim, tag), w + ".attn", cfg, tokens, tag)
    x = g.op("Add", [x, g.scale(y, w + ".gamma1", (dim,), 0.1, tag)], tag)
    y = _channel_processing(g, g.layernorm(x, w + ".norm2", dim, tag), w + ".mlp", cfg, grid, tag)
    return g.op("Add", [x, g.scale(y, w + ".gamma2", (dim,), 0.1, tag)], tag)


def _class_attention_block(g: _Graph, x: str, w: str, cfg: RealisticConfig, tokens: int, tag: str) -> str:
    """CaiT class attention on [B, 1 + N, C] (cls token first), tokens_norm=True as TAO's FAN."""
    dim, heads = cfg.embed_dim, cfg.heads
    head_dim = dim // heads
    n = tokens + 1
    xn = g.layernorm(x, w + ".norm1", dim, tag)
    cls = g.op("Gather", [xn, g.const("const.index0", np.array(0, np.int64))], tag, axis=1)  # [B, C]
    q = g.linear(cls, w + ".attn.q", dim, dim, tag)
    q = g.op("Reshape", [q, g.shape("shape.cls_heads", (heads, 1, head_dim))], tag)  # [B, h, 1, d]
    k = _heads_split(g, g.linear(xn, w + ".attn.k", dim, dim, tag), n, dim, heads, (0, 2, 3, 1), "shape.all_heads", tag)
    v = _heads_split(g, g.linear(xn, w + ".attn.v", dim, dim, tag), n, dim, heads, (0, 2, 1, 3), "shape.all_heads", tag)
    q = g.op("Mul", [q, g.const("const.attn_scale", np.array(head_dim ** -0.5, np.float32))], tag)
    attn = g.op("Softmax", [g.op("MatMul", [q, k], tag)], tag, axis=-1)  # [B, h, 1, N+1]
    x_cls = g.op("Transpose", [g.op("MatMul", [attn, v], tag)], tag, perm=[0, 2, 1, 3])
    x_cls = g.linear(g.op("Reshape", [x_cls, g.shape("shape.cls_dim", (1, dim))], tag), w + ".attn.proj", dim, dim, tag)
    rest_of = g.const("const.slice_rest", np.array([1], np.int64))
    end = g.const("const.slice_end", np.array([n], np.int64))
    axis1 = g.const("const.axis1", np.array([1], np.int64))
    patches = g.op("Slice", [xn, rest_of, end, axis1], tag)
    x = g.op("Add", [x, g.scale(g.op("Concat", [x_cls, patches], tag, axis=1), w + ".gamma1", (dim,), 0.1, tag)], tag)
    x = g.layernorm(x, w + ".norm2", dim, tag)
    first = g.op("Slice", [x, g.const("const.slice_zero", np.array([0], np.int64)), rest_of, axis1], tag)
    mlp = g.linear(g.gelu(g.linear(first, w + ".mlp.fc1", dim, cfg.mlp_ratio * dim, tag), tag),
                   w + ".mlp.fc2", cfg.mlp_ratio * dim, dim, tag)
    mlp = g.scale(mlp, w + ".gamma2", (dim,), 0.1, tag)
    return g.op("Add", [x, g.op("Concat", [mlp, g.op("Slice", [x, rest_of, end, axis1], tag)], tag, axis=1)], tag)


def _backbone(g: _Graph, image: str, cfg: RealisticConfig, tag: str) -> List[str]:
    """FAN-hybrid feature pyramid of one image: [c1 (1/4), c2 (1/8), c3 (1/16), c4 (1/16)]."""
    _, height, width = INPUT_SHAPE
    d1, d2 = cfg.stem_dims
    x = g.conv(image, "backbone.stem.conv", 3, d1, 4, tag, stride=4, pad=0)
    x = g.layernorm2d(x, "backbone.stem.norm", d1, tag)
    for i in range(cfg.stage_depths[0]):
        x = _convnext_block(g, x, "backbone.stages.0.blocks.{}".format(i), d1, cfg.mlp_ratio, tag)
    c1 = x
    x = g.layernorm2d(x, "backbone.stages.1.downsample.norm", d1, tag)
    x = g.conv(x, "backbone.stages.1.downsample.conv", d1, d2, 2, tag, stride=2, pad=0)
    for i in range(cfg.stage_depths[1]):
        x = _convnext_block(g, x, "backbone.stages.1.blocks.{}".format(i), d2, cfg.mlp_ratio, tag)
    c2 = x
    dim = cfg.embed_dim
    grid = (height // 16, width // 16)
    tokens = grid[0] * grid[1]
    x = g.conv(x, "backbone.patch_embed.proj", d2, dim, 2, tag, stride=2, pad=0)
    x = g.op("Transpose", [g.op("Reshape", [x, g.shape("shape.dim_tokens", (dim, tokens))], tag)], tag, perm=[0, 2, 1])
    pos = g.rng.standard_normal((1, tokens, dim), dtype=np.float32) * np.float32(0.02)
    x = g.op("Add", [x, g.const("backbone.pos_embed", pos)], tag)
    c3 = None
    for i in range(cfg.depth):
        x = _fan_block(g, x, "backbone.blocks.{}".format(i), cfg, grid, tag)
        if i == cfg.depth - 1:
            c3 = _tokens_to_map(g, x, dim, grid, tag)
    cls = g.const("backbone.cls_token", g.rng.standard_normal((1, 1, dim), dtype=np.float32) * np.float32(0.02))
    # cls token expanded to the batch: zeros [B, 1, C] taken from the tokens, plus the token
    zero_row = g.op("Mul", [g.op("Slice", [x, g.const("const.slice_zero", np.array([0], np.int64)),
                                           g.const("const.slice_rest", np.array([1], np.int64)),
                                           g.const("const.axis1", np.array([1], np.int64))], tag),
                            g.const("const.zero", np.array(0.0, np.float32))], tag)
    x = g.op("Concat", [g.op("Add", [zero_row, cls], tag), x], tag, axis=1)
    for i in range(cfg.cls_attn_layers):
        x = _class_attention_block(g, x, "backbone.cls_attn_blocks.{}".format(i), cfg, tokens, tag)
    patches = g.op("Slice", [x, g.const("const.slice_rest", np.array([1], np.int64)),
                             g.const("const.slice_end", np.array([tokens + 1], np.int64)),
                             g.const("const.axis1", np.array([1], np.int64))], tag)
    c4 = _tokens_to_map(g, patches, dim, grid, tag)
    assert c3 is not None
    return [c1, c2, c3, c4]


def _tokens_to_map(g: _Graph, x: str, dim: int, grid: Tuple[int, int], tag: str) -> str:
    """[B, N, C] -> [B, C, H, W]."""
    y = g.op("Transpose", [x], tag, perm=[0, 2, 1])
    return g.op("Reshape", [y, g.shape("shape.dim_grid", (dim, grid[0], grid[1]))], tag)


# -- the heads -----------------------------------------------------------------------------------
def _learnable_head(g: _Graph, sample: List[str], golden: List[str], cfg: RealisticConfig, output: str) -> None:
    _, height, width = INPUT_SHAPE
    e = cfg.decoder_dim
    channels = [cfg.stem_dims[0], cfg.stem_dims[1], cfg.embed_dim, cfg.embed_dim]
    strides = [4, 8, 16, 16]
    tag = "decoder"
    projected = []
    for feats in (sample, golden):
        level_maps = []
        for level, (fmap, c, s) in enumerate(zip(feats, channels, strides)):
            h, w = height // s, width // s
            y = g.op("Reshape", [fmap, g.shape("shape.flat_c{}".format(level + 1), (c, h * w))], tag)
            y = g.linear(g.op("Transpose", [y], tag, perm=[0, 2, 1]), "decoder.linear_c{}.proj".format(level + 1), c, e, tag)
            y = g.op("Transpose", [y], tag, perm=[0, 2, 1])
            level_maps.append(g.op("Reshape", [y, g.shape("shape.map_c{}".format(level + 1), (e, h, w))], tag))
        projected.append(level_maps)

    def diff(level: int) -> str:
        w = "decoder.diff_c{}".format(level + 1)
        y = g.op("Concat", [projected[0][level], projected[1][level]], tag, axis=1)
        y = g.op("Relu", [g.conv(y, w + ".0", 2 * e, e, 3, tag)], tag)
        y = g.batchnorm(y, w + ".2", e, tag)
        return g.op("Relu", [g.conv(y, w + ".3", e, e, 3, tag)], tag)

    c4 = diff(3)
    c3 = g.op("Add", [diff(2), c4], tag)  # strides 16 and 16: no upsampling
    c2 = g.op("Add", [diff(1), g.resize(c3, 2, tag)], tag)
    c1 = g.op("Add", [diff(0), g.resize(c2, 2, tag)], tag)
    fused = g.op("Concat", [g.resize(c4, 4, tag), g.resize(c3, 4, tag), g.resize(c2, 2, tag), c1], tag, axis=1)
    fused = g.batchnorm(g.conv(fused, "decoder.linear_fuse.0", 4 * e, e, 1, tag), "decoder.linear_fuse.1", e, tag)
    flat_dim = e * (height // 4) * (width // 4)
    y = g.op("Reshape", [fused, g.shape("shape.classifier_in", (flat_dim,))], tag)
    y = g.batchnorm(g.op("Relu", [g.gemm(y, "decoder.classifier.0", flat_dim, cfg.embed_dec, tag)], tag),
                    "decoder.classifier.2", cfg.embed_dec, tag)
    y = g.batchnorm(g.op("Relu", [g.gemm(y, "decoder.classifier.3", cfg.embed_dec, cfg.embed_dec, tag)], tag),
                    "decoder.classifier.5", cfg.embed_dec, tag)
    logits = g.gemm(y, "decoder.classifier.6", cfg.embed_dec, 2, tag)
    g.nodes.append(g.helper.make_node("Identity", [logits], [output], name="output"))


def _euclidean_head(g: _Graph, sample: List[str], golden: List[str], cfg: RealisticConfig, output: str) -> None:
    _, height, width = INPUT_SHAPE
    flat_dim = cfg.embed_dim * (height // 16) * (width // 16)
    hidden = cfg.euclid_hidden
    embeddings = []
    for feats, tag in ((sample, "sample.fc1"), (golden, "golden.fc1")):
        y = g.op("Reshape", [feats[3], g.shape("shape.embedding_in", (flat_dim,))], tag)
        y = g.batchnorm(g.op("Relu", [g.gemm(y, "fc1.0", flat_dim, hidden, tag)], tag), "fc1.2", hidden, tag)
        y = g.batchnorm(g.op("Relu", [g.gemm(y, "fc1.3", hidden, hidden, tag)], tag), "fc1.5", hidden, tag)
        embeddings.append(g.gemm(y, "fc1.6", hidden, cfg.embedding_vectors, tag))
    # F.pairwise_distance: || a - b + eps ||_2 over the embedding
    tag = "distance"
    d = g.op("Add", [g.op("Sub", embeddings, tag), g.const("const.pairwise_eps", np.array(1e-6, np.float32))], tag)
    g.nodes.append(g.helper.make_node("ReduceL2", [d], [output], name="output", axes=[1], keepdims=0))


# -- public API ----------------------------------------------------------------------------------
def build_realistic_model(
    kind: str = "learnable",
    batch: Optional[int] = None,
    opset: int = 17,
    config: RealisticConfig = FAN_HYBRID_SMALL,
    seed: int = 0,
    sample_input: str = DEFAULT_SAMPLE_INPUT,
    golden_input: str = DEFAULT_GOLDEN_INPUT,
    output: str = DEFAULT_OUTPUT,
):
    """Return an ``onnx.ModelProto`` of a FAN-hybrid-small-like ChangeNet classifier.

    ``kind``: ``learnable`` (``[B,2]`` logits) or ``euclidean`` (``[B]`` distance);
    ``batch``: ``None`` = dynamic (``"batch"``), else a static N baked into the graph as TAO's
    static exports; ``opset`` 12 or 17; ``config`` the sizes (default: TAO's FAN-hybrid-small);
    ``seed`` the weights' seed. The model carries its GFLOPs per pair in its metadata.
    """
    if kind not in ("learnable", "euclidean"):
        raise ValueError("kind must be 'learnable' or 'euclidean', not {!r}".format(kind))
    if opset not in (12, 13, 14, 15, 16, 17):
        raise ValueError("opset must be between 12 and 17")
    if batch is not None and batch < 1:
        raise ValueError("a static batch must be positive")
    if config.embed_dim % config.heads:
        raise ValueError("embed_dim must be a multiple of heads")
    g = _Graph(seed, opset, batch)
    sample = _backbone(g, sample_input, config, "sample")
    golden = _backbone(g, golden_input, config, "golden")
    if kind == "learnable":
        _learnable_head(g, sample, golden, config, output)
    else:
        _euclidean_head(g, sample, golden, config, output)
    batch_dim: Union[int, str] = "batch" if batch is None else batch
    image_shape = [batch_dim] + list(INPUT_SHAPE)
    out_shape = [batch_dim, 2] if kind == "learnable" else [batch_dim]
    graph = helper.make_graph(
        g.nodes,
        "changenet_fan_hybrid_small_like_{}".format(kind),
        [helper.make_tensor_value_info(sample_input, TensorProto.FLOAT, image_shape),
         helper.make_tensor_value_info(golden_input, TensorProto.FLOAT, image_shape)],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, out_shape)],
        initializer=list(g.inits.values()),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="changenet-trt")
    model.ir_version = 7 if opset <= 12 else 8
    macs = count_macs(model)
    helper.set_model_props(model, {
        META_PREPROCESS: "tao",
        META_DESCRIPTION: "FAN-hybrid-small-like ChangeNet ({}), random weights: for benchmarks only".format(kind),
        META_GFLOPS: "{:.3f}".format(macs.gflops),
    })
    onnx.checker.check_model(model)
    return model


def write_realistic_model(path: Union[str, "os.PathLike[str]"], **kwargs) -> str:
    """Build a realistic model (see :func:`build_realistic_model`) and save it to ``path``."""
    return save_model(build_realistic_model(**kwargs), path)


def save_model(model, path: Union[str, "os.PathLike[str]"]) -> str:
    """Save an ``onnx.ModelProto`` to ``path`` (folders are created); return the path."""


    path = check_output_file(path, what="model file")
    atomic_write(path, model.SerializeToString())
    return path


def model_gflops(model) -> float:
    """The GFLOPs per pair a generated model records in its metadata (counted when built)."""
    for prop in model.metadata_props:
        if prop.key == META_GFLOPS:
            return float(prop.value)
    return count_macs(model).gflops


@dataclass
class MacCount:
    """Multiply-accumulates of one pair (batch 1) by op type; ``gflops`` = 2 x MACs / 1e9."""

    by_op: Dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    @property
    def gflops(self) -> float:
        return 2.0 * self.total / 1e9


def count_macs(model) -> MacCount:
    """Count the MACs of Conv, MatMul and Gemm nodes of an ONNX model at batch 1.

    ``model``: an ``onnx.ModelProto`` or a path. Shapes come from ONNX shape inference with the
    batch set to 1 (a static batch N is divided out). Elementwise ops, normalisation, Softmax
    and pooling are not counted (they are a few percent of a transformer's arithmetic). One
    pair = one batch row, so the result is per pair.
    """
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model))
    # Infer on the graph alone: big weights become typed inputs (only their shapes matter);
    # small integer constants (Reshape targets, Slice bounds) stay, shape inference reads them.
    batch = 1
    inputs = []
    for value in model.graph.input:
        copy = onnx.ValueInfoProto()
        copy.CopyFrom(value)
        dims = copy.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            batch = dims[0].dim_value
        elif dims:
            dims[0].dim_value = 1
        inputs.append(copy)
    small = []
    shapes: Dict[str, Tuple[int, ...]] = {}
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
        if init.data_type == onnx.TensorProto.INT64 or int(np.prod(init.dims)) <= 16:
            small.append(init)
        else:
            inputs.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    graph = onnx.helper.make_graph(model.graph.node, model.graph.name, inputs, model.graph.output, initializer=small)
    light = onnx.helper.make_model(graph, opset_imports=model.opset_import)
    light.ir_version = model.ir_version
    inferred = shape_inference.infer_shapes(light, data_prop=True)
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(int(d.dim_value) for d in dims)
    by_op: Dict[str, int] = {}
    for node in inferred.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        out = shapes.get(node.output[0])
        if out is None:
            raise ValueError("cannot infer the output shape of {} '{}'".format(node.op_type, node.name))
        if node.op_type == "Conv":
            weight = shapes[node.input[1]]  # [C_out, C_in / groups, kH, kW]
            macs = int(np.prod(out)) * int(np.prod(weight[1:]))
        elif node.op_type == "MatMul":
            macs = int(np.prod(out)) * shapes[node.input[0]][-1]
        else:
            a = shapes[node.input[0]]
            trans_a = any(att.name == "transA" and att.i for att in node.attribute)
            macs = int(np.prod(out)) * (a[0] if trans_a else a[-1])
        by_op[node.op_type] = by_op.get(node.op_type, 0) + macs
    if batch > 1:
        by_op = {op: macs // batch for op, macs in by_op.items()}
    return MacCount(by_op)


def gflops_per_pair(model) -> float:
    """GFLOPs (2 x MACs) of one golden/sample pair; see :func:`count_macs`."""
    return count_macs(model).gflops
