"""The compute-realistic FAN-hybrid-small-like model: contract, op mix, numerics, GFLOPs."""

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from changenet_trt.api import make_runner
from changenet_trt.cli import main
from changenet_trt.cli.commands import examples
from changenet_trt.contract import read_contract
from changenet_trt.models import realistic
from changenet_trt.models.realistic import (
    FAN_HYBRID_SMALL,
    RealisticConfig,
    build_realistic_model,
    count_macs,
)

TINY = RealisticConfig(stem_dims=(16, 32), stage_depths=(1, 2), embed_dim=32, depth=2, heads=4, mlp_ratio=4,
                       cls_attn_layers=2, decoder_dim=16, embed_dec=8, embedding_vectors=5, euclid_hidden=24)


def hand_macs(cfg, kind, height=512, width=128):
    """Multiply-accumulates of one pair, written out from the architecture (batch 1)."""
    d1, d2, e, r = cfg.stem_dims[0], cfg.stem_dims[1], cfg.embed_dim, cfg.mlp_ratio
    p1, p2 = (height // 4) * (width // 4), (height // 8) * (width // 8)
    t = (height // 16) * (width // 16)
    n = t + 1
    backbone = p1 * d1 * 3 * 16  # stem conv 4x4/4
    backbone += cfg.stage_depths[0] * (p1 * d1 * 49 + 2 * p1 * d1 * r * d1)  # dw 7x7 + two 1x1
    backbone += p2 * d2 * d1 * 4  # downsample conv 2x2/2
    backbone += cfg.stage_depths[1] * (p2 * d2 * 49 + 2 * p2 * d2 * r * d2)
    backbone += t * e * d2 * 4  # patch embedding conv 2x2/2
    token_mixing = t * e * e + t * e * 2 * e + 2 * t * t * e + t * e * e  # q, kv, qk^T, attn v, proj
    channel = t * e * e + e * t + 2 * t * r * e * e + 2 * t * r * e * 9  # q, q@k, fc1 + fc2, two dw 3x3
    backbone += cfg.depth * (token_mixing + channel)
    class_attn = e * e + 2 * n * e * e + 2 * n * e + e * e + 2 * e * r * e  # q, k+v, qk, attn v, proj, mlp
    backbone += cfg.cls_attn_layers * class_attn
    total = 2 * backbone
    if kind == "learnable":
        k = cfg.decoder_dim
        total += 2 * (p1 * d1 * k + p2 * d2 * k + 2 * t * e * k)  # per-level Linear, both images
        total += sum(p * (2 * k * k * 9 + k * k * 9) for p in (t, t, p2, p1))  # difference modules
        total += p1 * 4 * k * k  # linear_fuse 1x1
        total += k * p1 * cfg.embed_dec + cfg.embed_dec ** 2 + cfg.embed_dec * 2  # classifier
    else:
        h = cfg.euclid_hidden
        total += 2 * (e * t * h + h * h + h * cfg.embedding_vectors)
    return total


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("realistic")
    out = {}
    for kind in ("learnable", "euclidean"):
        for opset in (12, 17):
            for batch in (None, 3):
                model = build_realistic_model(kind, batch=batch, opset=opset, config=TINY, seed=1)
                name = "{}_{}_{}".format(kind, opset, batch or "dyn")
                out[name] = (model, realistic.save_model(model, str(root / (name + ".onnx"))))
    return out


def run_ort(path, sample, golden):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {"input_1": sample, "input_2": golden})[0]


def images(count, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, 3, 512, 128), dtype=np.float32)


def test_contract_of_every_variant(tiny_models):
    for name, (_, path) in tiny_models.items():
        kind, _, batch = name.split("_")
        contract = read_contract(path)
        assert (contract.sample_input, contract.golden_input, contract.output) == ("input_1", "input_2", "output")
        assert contract.input_shape == (3, 512, 128) and contract.input_dtype == "float32"
        assert contract.output_kind == kind
        assert contract.static_batch == (None if batch == "dyn" else 3)
        assert contract.preprocess == "tao"


def test_op_mix_is_transformer_like(tiny_models):
    for name, (model, _) in tiny_models.items():
        ops = {node.op_type for node in model.graph.node}
        assert {"Conv", "MatMul", "Gemm", "Softmax", "Erf", "Sigmoid", "BatchNormalization", "Transpose"} <= ops
        assert "Gelu" not in ops  # not an ONNX op before opset 20
        if "_17_" in name:
            assert "LayerNormalization" in ops
        else:
            assert "LayerNormalization" not in ops and {"ReduceMean", "Sqrt", "Div"} <= ops
        depthwise = [n for n in model.graph.node if n.op_type == "Conv"
                     and any(a.name == "group" and a.i > 1 for a in n.attribute)]
        assert depthwise, "ConvNeXt and FAN blocks use depth-wise convolutions"
        if name.startswith("learnable"):
            assert "Resize" in ops
        else:
            assert "ReduceL2" in ops
        assert model.opset_import[0].version == int(name.split("_")[1])


def test_siamese_branches_share_every_weight(tiny_models):
    model, _ = tiny_models["learnable_17_dyn"]
    used = {"sample": set(), "golden": set()}
    inits = {init.name for init in model.graph.initializer}
    for node in model.graph.node:
        branch = node.name.split(".")[0]
        if branch in used:
            used[branch].update(i for i in node.input if i in inits)
    assert used["sample"] and used["sample"] == used["golden"]
    assert not any(name.startswith(("sample.", "golden.")) for name in inits)


def test_outputs_are_finite_batch_independent_and_match_across_opsets(tiny_models):
    sample, golden = images(3, 0), images(3, 1)
    for kind in ("learnable", "euclidean"):
        dyn = run_ort(tiny_models[kind + "_17_dyn"][1], sample, golden)
        assert np.isfinite(dyn).all()
        assert dyn.shape == ((3, 2) if kind == "learnable" else (3,))
        one = run_ort(tiny_models[kind + "_17_dyn"][1], sample[1:2], golden[1:2])
        np.testing.assert_allclose(one[0], dyn[1], rtol=1e-4, atol=1e-5)
        static = run_ort(tiny_models[kind + "_17_3"][1], sample, golden)
        np.testing.assert_allclose(static, dyn, rtol=1e-4, atol=1e-5)
        # opset 12 decomposes LayerNorm: same function
        old = run_ort(tiny_models[kind + "_12_dyn"][1], sample, golden)
        np.testing.assert_allclose(old, dyn, rtol=1e-3, atol=1e-4)
    # a euclidean pair of identical images is at distance |eps| * sqrt(embedding size)
    same = run_ort(tiny_models["euclidean_17_dyn"][1], sample, sample)
    np.testing.assert_allclose(same, 1e-6 * np.sqrt(TINY.embedding_vectors), rtol=1e-3)
    assert run_ort(tiny_models["euclidean_17_dyn"][1], sample, golden).min() > 1e-3


def test_gelu_is_the_exact_erf_form():
    from onnx import TensorProto, helper

    g = realistic._Graph(seed=0, opset=17, batch=None)
    out = g.gelu("x", "t")
    graph = helper.make_graph(g.nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [7])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [7])],
                              initializer=list(g.inits.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = np.array([-3, -1, -0.5, 0, 0.5, 1, 3], np.float32)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    import math

    want = [v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x.tolist()]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_runs_on_our_onnxruntime_runner(tiny_models):
    path = tiny_models["learnable_17_dyn"][1]
    sample, golden = images(2, 3), images(2, 4)
    with make_runner(path, batch_size=2) as runner:
        out = runner.infer({"input_1": sample, "input_2": golden})["output"]
    np.testing.assert_allclose(out, run_ort(path, sample, golden), rtol=1e-5, atol=1e-6)


def test_counted_macs_match_the_hand_count(tiny_models):
    for name, (model, _) in tiny_models.items():
        kind = name.split("_")[0]
        counted = count_macs(model)
        assert counted.total == hand_macs(TINY, kind), name
        assert counted.gflops == pytest.approx(2 * hand_macs(TINY, kind) / 1e9)
        assert realistic.model_gflops(model) == pytest.approx(counted.gflops, abs=1e-3)


def test_other_sizes_count_right_too():
    cfg = RealisticConfig(stem_dims=(8, 24), stage_depths=(2, 1), embed_dim=48, depth=3, heads=6, mlp_ratio=2,
                          cls_attn_layers=1, decoder_dim=8, embed_dec=4, embedding_vectors=3, euclid_hidden=16)
    for kind in ("learnable", "euclidean"):
        assert count_macs(build_realistic_model(kind, config=cfg)).total == hand_macs(cfg, kind)


def test_default_model_is_fan_hybrid_small_sized(tmp_path):
    model = build_realistic_model("learnable")
    counted = count_macs(model)
    assert counted.total == hand_macs(FAN_HYBRID_SMALL, "learnable")
    # FAN-hybrid-small backbone: ~26M parameters (FAN paper); at 512x128 ~9.2 GMACs per image
    backbone = {i.name: int(np.prod(i.dims)) for i in model.graph.initializer if i.name.startswith("backbone.")}
    assert 20e6 < sum(backbone.values()) < 32e6
    assert 8.5e9 < (hand_macs(FAN_HYBRID_SMALL, "euclidean") / 2) < 10e9
    classifier = next(i for i in model.graph.initializer if i.name == "decoder.classifier.0.weight")
    assert list(classifier.dims) == [30, 256 * 128 * 32]  # TAO: Linear(embed_dim * H/4 * W/4, embed_dec)
    assert 55 < realistic.model_gflops(model) < 65


def test_seeded_weights(tmp_path):
    a = build_realistic_model("euclidean", config=TINY, seed=5)
    b = build_realistic_model("euclidean", config=TINY, seed=5)
    c = build_realistic_model("euclidean", config=TINY, seed=6)
    assert a.SerializeToString() == b.SerializeToString()
    assert a.SerializeToString() != c.SerializeToString()


def test_cli_writes_the_realistic_model(tmp_path, monkeypatch, capsys):
    # the full-size model takes seconds and 260 MB; the CLI path is the same with a small config
    monkeypatch.setattr(examples, "build_realistic_model",
                        functools.partial(realistic.build_realistic_model, config=TINY))
    out = tmp_path / "models" / "real.onnx"
    assert main(["reference-model", str(out), "--realistic", "--kind", "euclidean", "--batch", "4",
                 "--opset", "12"]) == 0
    text = capsys.readouterr().out
    gflops = 2 * hand_macs(TINY, "euclidean") / 1e9
    assert "FAN-hybrid-small-like" in text and "{:.2f} GFLOPs per pair".format(gflops) in text
    contract = read_contract(str(out))
    assert contract.static_batch == 4 and contract.output_kind == "euclidean" and contract.opset == 12
    assert onnx.load(str(out)).opset_import[0].version == 12
