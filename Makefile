# Two entry points for a fresh machine (Python 3.11 + apt):
#   make quickstart   set up a virtualenv and run the main job on embedded defaults
#   make test         set up everything the tests need and run the whole suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.modelyard-installed
PYTEST_ARGS ?=

.PHONY: quickstart local-cluster test system-deps cluster venv bench clean

venv: $(STAMP)

# torch comes first, pinned, so the range in the `quickstart` extra is already met and pip
# never reaches for a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,quickstart]'
	touch $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/modelyard quickstart

# From a checkout to a served prediction on kind, minikube or k3d (docker or podman): builds and loads
# both images, installs the chart, pushes the quickstart's model, waits for Ready, prints a curl.
local-cluster: $(STAMP)
	$(VENV)/bin/modelyard local-cluster

system-deps:
	bash scripts/system-deps.sh

# The test clusters, from Debian's packages: the control plane and node binaries built from the
# `kubernetes` source package (about 5 minutes the first time, then cached by package version
# under ~/.cache/modelyard), containerd and friends, and the product's two images (built with
# buildah, cached by a hash of their inputs).
cluster:
	bash tests/cluster/node.sh build
	bash tests/cluster/images.sh build >/dev/null

test: system-deps cluster $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/registry_bench.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
