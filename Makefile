# Two commands do all the set-up on a fresh machine:
#   make demo   - the main job: a real sparse training run on embedded data
#   make test   - the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, from the exact local CPU build, so nothing later pulls a CUDA wheel.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test,kernels]"
	# compile our CPU kernels once now, so the demo and the tests do not pay for it
	$(PY) -m sparsetrain.kernels.build --quiet || echo "sparsetrain: WARNING: the CPU kernels did not build (see above); the stock torch-sparse kernels will serve"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sparsetrain train

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) benchmarks/layer_bench.py

clean:
	rm -rf $(VENV) build src/*.egg-info
