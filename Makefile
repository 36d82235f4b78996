# Two entry points for newcomers:  `make demo` (install + train the quickstart recipe end to end)
# and `make test` (install + run every test of the core and the plugins).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FER := $(VENV)/bin/fer
PLUGINS := $(sort $(wildcard plugins/fer-*))
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml $(wildcard plugins/*/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools
	$(PY) -m pip install -q -e '.[torch,test,serve,onnx,lora]' $(foreach p,$(PLUGINS),-e $(p))
	touch $(STAMP)

demo: install
	$(FER) plugins
	$(FER) recipe check quickstart
	$(FER) run quickstart

test: install
	-sh scripts/install-browser.sh
	$(PY) -m pytest -q -n 2 --dist loadgroup

bench: install
	$(PY) benchmarks/cli_startup.py
	$(PY) benchmarks/loader.py
	$(PY) benchmarks/trainer_overhead.py
	$(PY) benchmarks/encode.py
	$(PY) benchmarks/serve.py --onnx
	$(PY) benchmarks/fairness_synth.py
	$(PY) benchmarks/profile_run.py
	$(PY) benchmarks/timm_compare.py
	$(PY) benchmarks/limit_paired.py
	$(PY) benchmarks/allocator.py

clean:
	rm -rf $(VENV) runs data
