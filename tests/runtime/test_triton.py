"""Triton: repository configs parse strictly; a real tritonserver serves the model like ONNX Runtime.

The server tests start PyPI's tritonserver (nvidia-pytriton, python backend) from .venv-triton
(`make triton-venv`, done by `make test`) and skip with the reason where it cannot run here.
"""

import glob
import os
import threading

import numpy as np
import pytest

from changenet_trt.api import backend_for, load
from changenet_trt.errors import InputError

tritonclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient (the triton extra) is not installed")

from changenet_trt.engine.triton_repo import parse_config, write_model_repository  # noqa: E402
from changenet_trt.evaluation.evaluate import evaluate  # noqa: E402
from changenet_trt.runtime.triton import TritonError, parse_url  # noqa: E402

from fakes.engine_files import opaque_engine  # noqa: E402
from helpers import run_in_threads  # noqa: E402


@pytest.mark.parametrize("platform", ["python", "onnxruntime_onnx", "tensorrt_plan"])
def test_repository_config_parses_strictly_for_every_platform(tmp_path, reference_models, platform):
    model = opaque_engine(tmp_path) if platform == "tensorrt_plan" else reference_models["euclidean_static16"]
    report = write_model_repository(model, str(tmp_path / "repo"), name="cn", platform=platform,
                                    max_batch=8, instances=2)
    config = parse_config(open(os.path.join(report.model_dir, "config.pbtxt")).read())
    assert config.name == "cn" and config.max_batch_size == 8
    assert [(i.name, list(i.dims)) for i in config.input] == [("input_1", [3, 512, 128]), ("input_2", [3, 512, 128])]
    out = config.output[0]
    assert list(out.dims) == [1] and out.HasField("reshape") and list(out.reshape.shape) == []
    assert config.HasField("dynamic_batching") and list(config.dynamic_batching.preferred_batch_size) == []
    assert config.instance_group[0].count == 2
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["changenet.output_kind"] == "euclidean"
    # the ONNX carries its recommended cutoff; an engine's sidecar has none (the default 0.5)
    assert float(params["changenet.cutoff"]) == (0.5 if platform == "tensorrt_plan" else 0.045)
    files = sorted(os.path.relpath(p, report.model_dir) for p in glob.glob(report.model_dir + "/**", recursive=True)
                   if os.path.isfile(p))
    expected = {"python": ["1/model.onnx", "1/model.py", "config.pbtxt"],
                "onnxruntime_onnx": ["1/model.onnx", "config.pbtxt"],
                "tensorrt_plan": ["1/model.plan", "1/model.plan.json", "config.pbtxt"]}[platform]
    assert files == expected
    if platform == "tensorrt_plan":
        assert config.platform == "tensorrt_plan" and params["changenet.tensorrt_version"] == "10.3.0"
        assert any("TensorRT 10.3.0" in n for n in report.notes)
    else:
        assert report.contract.static_batch is None  # the static-16 export was made dynamic
        assert any("static batch 16 made dynamic" in n for n in report.notes)
    assert not [p for p in os.listdir(str(tmp_path / "repo")) if p.startswith(".")]  # no staging left


def test_repository_refusals_leave_nothing(tmp_path, reference_models):
    repo = str(tmp_path / "repo")
    model = reference_models["learnable_dynamic"]
    with pytest.raises(InputError, match="unknown Triton platform"):
        write_model_repository(model, repo, platform="tensorflow")
    with pytest.raises(InputError, match="serves a TensorRT engine"):
        write_model_repository(model, repo, platform="tensorrt_plan")
    with pytest.raises(InputError, match="exceeds the engine's optimisation profile"):
        write_model_repository(opaque_engine(tmp_path), repo, platform="tensorrt_plan", max_batch=64)
    assert not os.listdir(repo)
    write_model_repository(model, repo, name="cn")
    with pytest.raises(InputError, match="already exists") as info:
        write_model_repository(model, repo, name="cn")
    assert "--overwrite" in str(info.value) and "--name" in str(info.value)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="is an existing file"):
        write_model_repository(model, str(blocker), name="cn")


def test_urls_select_the_triton_backend_and_errors_are_clear():
    assert backend_for("grpc://127.0.0.1:8001/cn") == "triton"
    assert backend_for("http://server/cn") == "triton"
    assert parse_url("http://server/cn/3").port == 8000 and parse_url("http://server/cn/3").version == "3"
    with pytest.raises(InputError, match="cannot read the Triton model URL"):
        parse_url("grpc://127.0.0.1:8001/")
    from changenet_trt.tools.triton_server import free_port

    with pytest.raises(TritonError, match="no Triton server answers"):
        load("grpc://127.0.0.1:{}/cn".format(free_port()), timeout_s=2)
    with pytest.raises(TritonError, match="no Triton server answers"):
        load("http://127.0.0.1:{}/cn".format(free_port()), timeout_s=2)


def test_making_a_runner_contacts_no_server(monkeypatch):
    from changenet_trt.runtime import triton
    from changenet_trt.tools.triton_server import free_port

    made = []
    real = triton._Connection

    def counting(endpoint, timeout_s):
        made.append(endpoint.url)
        return real(endpoint, timeout_s)

    monkeypatch.setattr(triton, "_Connection", counting)
    url = "grpc://127.0.0.1:{}/cn".format(free_port())
    runner = triton.TritonRunner(url, max_batch=4, timeout_s=2)  # nothing listens there: no error yet
    assert made == [] and runner.num_slots == 2
    with pytest.raises(triton.ChangeNetError, match="when it activates"):
        assert runner.contract is None  # never reached: reading it raises
    with pytest.raises(triton.ChangeNetError, match="when it activates"):
        assert runner.batch_range is None  # never reached: reading it raises
    with pytest.raises(TritonError, match="no Triton server answers"):
        runner.activate()  # the server is first asked here
    assert made == [url] and not runner.is_active


# -- a real server ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory, reference_models):
    """A tritonserver on 127.0.0.1 serving the learnable reference model (float and uint8 input)."""
    from changenet_trt.tools.triton_server import LocalTritonServer, ServerUnavailable

    root = tmp_path_factory.mktemp("triton")
    repo = str(root / "repo")
    model = reference_models["learnable_static16"]
    # the queue delay lets the batcher wait for the parallel clients of the batching test, so the
    # merge it checks does not depend on how busy this machine is
    write_model_repository(model, repo, name="cn", platform="python", max_batch=16, ort_threads=1,
                           queue_delay_us=300000)
    write_model_repository(model, repo, name="cn8", platform="python", max_batch=16, uint8_input=True, ort_threads=1)
    try:
        server = LocalTritonServer(repo)
    except ServerUnavailable as exc:
        pytest.skip("no local tritonserver: {}".format(exc))
    segments_before = set(os.listdir("/dev/shm"))
    with server:
        yield {"server": server, "model": model, "root": root}
    assert server.process.returncode == 0, server.log[-2000:]
    assert server.process.poll() is not None
    # every region this process made is gone (other processes on the machine may make their own)
    ours = "changenet-{}-".format(os.getpid())
    assert {n for n in set(os.listdir("/dev/shm")) - segments_before if n.startswith(ours)} == set()


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    from changenet_trt.data.synth import synthesize

    return synthesize(str(tmp_path_factory.mktemp("tset")), pairs=40, defect_rate=0.4, seed=11)


@pytest.mark.triton
@pytest.mark.parametrize("scheme", ["grpc", "http"])
@pytest.mark.parametrize("shared_memory", [True, False])
def test_eval_through_triton_equals_onnxruntime(served, small_set, scheme, shared_memory):
    local = evaluate(served["model"], small_set.csv_path, out_dir=None, progress=False)
    url = getattr(served["server"], scheme + "_url")("cn")
    remote = evaluate(url, small_set.csv_path, out_dir=None, progress=False, shared_memory=shared_memory)
    assert remote.summary["backend"] == "triton"
    np.testing.assert_array_equal(remote.scores, local.scores)
    for key in ("tp", "fp", "tn", "fn", "fpr", "defect_capture", "cutoff"):
        assert remote.summary[key] == local.summary[key], key


@pytest.mark.triton
def test_uint8_model_and_several_servers(served):
    from changenet_trt.tools.demo import make_pairs

    server = served["server"]
    golden, sample, _ = make_pairs(20, seed=4)
    with load(served["model"]) as clf:
        expected = clf.predict(golden, sample)
    urls = [server.grpc_url("cn8"), server.http_url("cn8")]  # two endpoints share the batches
    with load(urls) as clf:
        assert clf.contract.input_dtype == "uint8" and clf.runner.num_slots == 2
        got = clf.predict(golden, sample)
        stats = clf.runner.statistics()
    np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-6, atol=1e-7)
    assert [s["model_stats"][0]["name"] for s in stats] == ["cn8", "cn8"]


@pytest.mark.triton
def test_dynamic_batching_merges_parallel_clients(served):
    from changenet_trt.runtime.triton import TritonRunner

    url = served["server"].grpc_url("cn")
    before = TritonRunner(url)
    with before:
        start = before.statistics()[0]["model_stats"][0]
    rng = np.random.default_rng(0)
    barrier = threading.Barrier(4)
    # 3 pairs a request is no preferred batch size (4, 8, 16), so the scheduler holds each request
    # for the queue delay and merges what the other clients sent meanwhile
    def client(seed):
        with TritonRunner(url, max_batch=3) as runner:
            feed = {n: rng.normal(size=(3, 3, 512, 128)).astype(np.float32) for n in runner.contract.input_names()}
            barrier.wait()
            for _ in range(3):
                runner.infer(feed)

    errors = run_in_threads(client, 4)
    assert not errors, errors
    with before:
        end = before.statistics()[0]["model_stats"][0]
    # protobuf's JSON leaves out zero counts (a model not yet used has none)
    def count(stats, *keys):
        for key in keys:
            stats = stats.get(key, {})
        return int(stats or 0)

    requests = count(end, "inference_stats", "success", "count") - count(start, "inference_stats", "success", "count")
    executions = count(end, "execution_count") - count(start, "execution_count")
    assert requests == 12
    assert executions < requests  # the scheduler ran several clients' requests as one batch
    sizes = {int(b["batch_size"]) for b in end["batch_stats"]}
    assert any(size > 3 for size in sizes), sizes


@pytest.mark.triton
def test_missing_model_is_reported_with_what_the_server_has(served):
    with pytest.raises(TritonError, match="'nope' is not ready.*cn"):
        load(served["server"].grpc_url("nope"))
    with pytest.raises(TritonError, match="'nope' is not ready"):
        load(served["server"].http_url("nope"))

