# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo
DEMO_MINUTES ?= 3
PYTEST_ARGS ?= -m "not slow"

.PHONY: install demo test test-all bench clean

install: $(STAMP)

$(STAMP): requirements.txt constraints.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -c constraints.txt -r requirements.txt
	@# learn2learn 0.2.0's shipped C files predate Python 3.11: let Cython regenerate them.
	$(PY) -c "import learn2learn" 2>/dev/null || \
	  $(PIP) install -q --no-deps --no-build-isolation \
	    --config-settings=--build-option=build_ext -c constraints.txt learn2learn==0.2.0
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PY) -c "import l2l_app, learn2learn, torch; print('installed: torch', torch.__version__, 'learn2learn', learn2learn.__version__)"
	touch $(STAMP)

demo: install
	$(VENV)/bin/l2l-app train --recipe protonet-omniglot-5w1s --iterations 100000 \
	  --time-budget $(DEMO_MINUTES) --val-every 100 --val-episodes 100 --seed 0 \
	  --out $(DEMO_DIR) --overwrite
	$(VENV)/bin/l2l-app eval $(DEMO_DIR) --episodes 1000 --split test
	$(VENV)/bin/l2l-app eval $(DEMO_DIR) --episodes 1000 --split test --shots 5

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -q -m ""

clean:
	rm -rf $(VENV) runs .pytest_cache
