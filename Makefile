# make demo: install + SoftCon demo pretraining on the synthetic data + linear probe + export.
# make test: install (incl. torch/timm, tensorflow-cpu in its own venv, terratorch in another) + the
# import-layers check (lint-imports, contract in setup.cfg) + the whole test suite.
PYTHON ?= python3
VENV ?= .venv
TF_VENV ?= .venv-tf
TT_VENV ?= .venv-tt
# TerraTorch beside torchgeo 0.8.1 (tests/test_terratorch.py, examples/terratorch_finetune.py):
# terratorch 1.2.12+ require torchgeo 0.9, so 1.2.11 is the newest that installs with 0.8.1.
TT_PINS := torch==2.14.1 torchvision==0.29.1 torchgeo==0.8.1 terratorch==1.2.11
TT_STAMP := $(TT_VENV)/.terratorch-1.2.11
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/softcon_demo
CONFIG ?= configs/softcon_vit_s.py:demo

.PHONY: demo test install install-test tf-env tt-env clean

$(VENV)/.core:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.core setup.py
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	touch $@

$(TF_VENV)/.tf-tfds:
	$(PYTHON) -m venv $(TF_VENV)
	$(TF_VENV)/bin/python -m pip install -q --upgrade pip
	$(TF_VENV)/bin/python -m pip install -q tensorflow-cpu tensorflow-datasets crc32c 'ml-dtypes<0.7'
	touch $@

$(TT_STAMP):
	$(PYTHON) -m venv $(TT_VENV)
	$(TT_VENV)/bin/python -m pip install -q --upgrade pip
	$(TT_VENV)/bin/python -m pip install -q $(TT_PINS)
	touch $@

install: $(VENV)/.core
install-test: $(VENV)/.test
tf-env: $(TF_VENV)/.tf-tfds
tt-env: $(TT_STAMP)

demo: $(VENV)/.core
	$(PY) main.py --config=$(CONFIG) --workdir=$(WORKDIR)
	$(PY) -m geossl.eval.linear_probe --workdir=$(WORKDIR) --dataset=synthetic
	$(PY) -m geossl.eval.linear_probe --workdir=$(WORKDIR) --dataset=synthetic --random_init

test: $(VENV)/.test $(TF_VENV)/.tf-tfds $(TT_STAMP)
	$(VENV)/bin/lint-imports
	GEOSSL_TF_PYTHON=$(abspath $(TF_VENV))/bin/python \
	GEOSSL_TERRATORCH_PYTHON=$(abspath $(TT_VENV))/bin/python $(PY) -m pytest -n 2 --dist worksteal -q -rs

clean:
	rm -rf $(VENV) $(TF_VENV) $(TT_VENV) workdirs
