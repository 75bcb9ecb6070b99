# Two entry points for a new user: `make demo` and `make test`.
# Both create .venv if missing (with --system-site-packages so JetPack's system TensorRT
# stays visible on a Jetson), install the package into it, and run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-changenet-trt
# A local tritonserver for the tests and the Triton demo: PyPI's nvidia-pytriton wheel bundles it
# (python backend only, glibc >= 2.35, numpy < 2), so it gets its own venv; only the server is
# used (--no-deps: none of pytriton's Python API), with numpy and ONNX Runtime for the python
# model. When it cannot be installed here, the reason is kept in $(TRITON_VENV)/.unavailable and the Triton test skips with it.
TRITON_VENV ?= .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed-tritonserver

# TAO Deploy as an oracle (tests/tao_deploy/test_tao_deploy.py): nvidia-tao-deploy 7.3.0 in its own venv and
# 7.1.0 (the old metric definitions) under $(TAO_VENV)/tao-deploy-7.1.0, both --no-deps: only the
# packages its Visual ChangeNet-Classification loader, inferencer and evaluate/inference scripts
# import. TensorRT, pycuda and nvidia-tao-core are replaced by tests/tao_deploy/stand_ins (ONNX
# Runtime plays the engine). TAO Deploy 7.x needs Python >= 3.10 (TAO_PYTHON).
TAO_PYTHON ?= $(PYTHON)
TAO_VENV ?= .venv-tao-deploy
TAO_STAMP := $(TAO_VENV)/.installed-tao-deploy
TAO_DEPS := numpy pandas pillow opencv-python-headless onnxruntime onnx tqdm hydra-core==1.3.2 omegaconf \
	matplotlib packaging pycocotools


# The `tao` test tier: TAO 7.3.0's own Visual ChangeNet-Classification export (FAN-hybrid-small, PCB
# spec, seeded random weights) in its own venv, then this package's commands on those files. TAO's
# wheel is cp312 only and declares no dependencies: it goes in with --no-deps beside the few
# packages its FAN export path imports (tests/tao/requirements.txt); tests/tao/standins/ stands in,
# for import only, for the modules that path imports but never runs.
TAO_EXPORT_PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) python3.12)
TAO_EXPORT_VENV ?= .venv-tao
TAO_EXPORT_STAMP := $(TAO_EXPORT_VENV)/.installed-tao-7.3.0
TAO_MODELS ?= .tao-models

.PHONY: demo test lint install clean triton-venv triton-demo tao-deploy-venv test-tao-deploy tao-venv tao-models test-tao

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,triton]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/changenet-trt demo

lint: $(STAMP)
	$(BIN)/ruff check changenet_trt tests benchmarks
	$(BIN)/vermin --target=3.8- --violations --no-tips --eval-annotations changenet_trt

test: lint $(TRITON_STAMP)
	$(BIN)/python -m pytest -q

$(TRITON_STAMP):
	rm -f $(TRITON_VENV)/.unavailable
	( test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV) ) \
	  && $(TRITON_VENV)/bin/python -m pip install --quiet --no-deps 'nvidia-pytriton>=0.5' \
	  && $(TRITON_VENV)/bin/python -m pip install --quiet 'numpy<2' onnxruntime \
	  || { mkdir -p $(TRITON_VENV); echo "pip could not install nvidia-pytriton, numpy<2 and onnxruntime into $(TRITON_VENV)" > $(TRITON_VENV)/.unavailable; }
	touch $(TRITON_STAMP)

triton-venv: $(TRITON_STAMP)

$(TAO_EXPORT_STAMP): tests/tao/requirements.txt
	test -x $(TAO_EXPORT_VENV)/bin/python || $(TAO_EXPORT_PYTHON) -m venv $(TAO_EXPORT_VENV)
	$(TAO_EXPORT_VENV)/bin/python -m pip install --quiet -r tests/tao/requirements.txt
	$(TAO_EXPORT_VENV)/bin/python -m pip install --quiet --no-deps nvidia-tao-pytorch==7.3.0
	touch $(TAO_EXPORT_STAMP)

tao-venv: $(TAO_EXPORT_STAMP)

# Exports only what is missing or stale ($(TAO_MODELS)/manifest.json records each file's sha256).
tao-models: $(TAO_EXPORT_STAMP)
	$(TAO_EXPORT_VENV)/bin/python tests/tao/export_tao.py --out $(TAO_MODELS)

test-tao: $(STAMP) tao-models
	CHANGENET_TAO_MODELS=$(abspath $(TAO_MODELS)) $(BIN)/python -m pytest -q -p no:cacheprovider -m tao tests/tao

$(TAO_STAMP):
	rm -f $(TAO_VENV)/.unavailable
	$(TAO_PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
	  && ( test -x $(TAO_VENV)/bin/python || $(TAO_PYTHON) -m venv $(TAO_VENV) ) \
	  && $(TAO_VENV)/bin/python -m pip install --quiet --no-deps nvidia-tao-deploy==7.3.0 \
	  && $(TAO_VENV)/bin/python -m pip install --quiet --no-deps --upgrade --target $(TAO_VENV)/tao-deploy-7.1.0 nvidia-tao-deploy==7.1.0 \
	  && $(TAO_VENV)/bin/python -m pip install --quiet $(TAO_DEPS) \
	  || { mkdir -p $(TAO_VENV); echo "could not install nvidia-tao-deploy 7.3.0/7.1.0 and $(TAO_DEPS) into $(TAO_VENV) (TAO Deploy 7.x needs Python >= 3.10: set TAO_PYTHON)" > $(TAO_VENV)/.unavailable; }
	touch $(TAO_STAMP)

tao-deploy-venv: $(TAO_STAMP)

# fails (not skips) when the TAO Deploy venv could not be made
test-tao-deploy: $(STAMP) $(TAO_STAMP)
	CHANGENET_REQUIRE_TAO_DEPLOY=1 $(BIN)/python -m pytest -q -m tao_deploy tests/tao_deploy/test_tao_deploy.py

triton-demo: $(STAMP) $(TRITON_STAMP)
	$(BIN)/python -m changenet_trt.tools.triton_demo

clean:
	rm -rf $(VENV) $(TRITON_VENV) $(TAO_VENV) $(TAO_EXPORT_VENV) $(TAO_MODELS) demo-output triton-demo-output .pytest_cache .ruff_cache
