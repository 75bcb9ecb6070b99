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

.PHONY: demo test lint install clean triton-venv triton-demo

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

triton-demo: $(STAMP) $(TRITON_STAMP)
	$(BIN)/python -m changenet_trt.tools.triton_demo

clean:
	rm -rf $(VENV) $(TRITON_VENV) demo-output triton-demo-output .pytest_cache .ruff_cache
