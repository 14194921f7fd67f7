# Two commands on a fresh machine: `make demo` and `make test` (both set up .venv first).
PYTHON      ?= python3
VENV        ?= .venv
# torch goes in first and pinned: any other spec pulls a multi-GB CUDA build here.
TORCH_SPEC  ?= torch==2.13.0
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.kernel-magics-installed
EXT_STAMP   := extension/node_modules/.kernel-magics-installed
DEMO_OUT    ?= .demo
# The demo uses the embedded default store (KERNEL_MAGICS_HOME, default ~/.kernel-magics).
DEMO_HOME   ?= $(or $(KERNEL_MAGICS_HOME),$(HOME)/.kernel-magics)

.PHONY: setup setup-system demo test test-unit test-py test-pytest test-ray test-notebooks test-mlserver lint bench \
	bench-generate clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: setup
	@mkdir -p $(DEMO_OUT)
	KERNEL_MAGICS_HOME=$(DEMO_HOME) KERNEL_MAGICS_PROGRESS=text \
		$(BIN)/papermill notebooks/quickstart.ipynb $(DEMO_OUT)/quickstart.out.ipynb \
		--kernel python3 --log-output --no-progress-bar
	@echo
	@echo "executed notebook : $(abspath $(DEMO_OUT))/quickstart.out.ipynb"
	@KERNEL_MAGICS_HOME=$(DEMO_HOME) $(BIN)/kernel-magics serve status

# The pytest tiers first, on two workers; then the Ray tests (in a network namespace of their
# own), the notebooks (nbval, on loopback in this one) and lint side by side: they share
# nothing, the first two spend much of their time waiting on processes they start, and lint
# (about a minute from a clean checkout) is then off the critical path. Each one's output is
# printed whole when it ends.
test: setup setup-system
	$(MAKE) --no-print-directory test-pytest
	$(MAKE) --no-print-directory -j3 --output-sync=target test-ray test-notebooks lint

# What the tests need from Debian, installed once: Chromium for tests/browser (Playwright
# downloads no browser) and PostgreSQL for the store on an MLflow tracking server. Nothing to
# do (and no apt-get) when both are there; make demo needs neither.
setup-system:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		apt-get install -y -qq $$missing >/dev/null 2>&1 || \
			{ apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; }; \
	fi

# The fast tier: the tests that run in this process alone (tests/conftest.py gives every test
# its tier). nbval and schemathesis serve other tiers: not loaded here.
test-unit: setup
	$(BIN)/pytest tests -m unit -q -p no:cacheprovider -p no:nbval -p no:schemathesis

# Everything but the Ray tests (their own target) and tests/optional (make test-mlserver), on
# two workers (pytest-xdist): much of a test's time is waiting on a process it started. A
# module's tests stay on one worker (--dist loadfile), so its fixtures are set up once.
PYTEST_WORKERS ?= 2
test-pytest: setup
	$(BIN)/pytest tests -q -p no:cacheprovider --ignore=tests/ray --ignore=tests/optional \
		-n $(PYTEST_WORKERS) --dist loadfile --durations=15

# lint, then the pytest tiers
test-py: lint test-pytest

# The ray target against a real local Ray head. Ray binds every interface it finds, so the head
# and its clients run in a network namespace of their own holding only loopback.
test-ray: setup
	unshare -n sh -c 'ip link set lo up && exec $(BIN)/pytest tests/ray -q -p no:cacheprovider'

# Optional, not part of `make test`: the v2 answers of the inference process beside MLServer
# 1.7.1's for the same MLflow model (tests/optional). MLServer downgrades fastapi, starlette and
# protobuf, so it gets an env of its own (torch first, pinned; the mlflow version of .venv);
# the test runs from .venv and starts `mlserver` from there.
MLSERVER_VENV  ?= .venv-mlserver
MLSERVER_STAMP := $(MLSERVER_VENV)/.mlserver-installed
test-mlserver: setup $(MLSERVER_STAMP)
	MLSERVER_VENV=$(abspath $(MLSERVER_VENV)) \
		$(BIN)/pytest tests/optional/test_mlserver_v2.py -q -rs -p no:cacheprovider

$(MLSERVER_STAMP): | $(STAMP)
	test -x $(MLSERVER_VENV)/bin/python || $(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(MLSERVER_VENV)/bin/pip install --quiet --disable-pip-version-check mlserver==1.7.1 \
		mlserver-mlflow==1.7.1 mlflow==$$($(BIN)/python -c \
		'import importlib.metadata as m; print(m.version("mlflow"))')
	touch $@

# nbval runs the notebooks in fresh kernels against a throwaway home, then stops the
# inference process they started there (only that one: it is found through that home's state file).
# quickstart, any_model, optimize and preprocessing are run with Run All in JupyterLab instead
# (tests/browser/test_run_all.py: queued cells, the training widget), which nbval's one cell at a
# time cannot check; running them here too would only add a minute to `make test`.
NOTEBOOKS ?= notebooks/pipelines/train.ipynb notebooks/pipelines/evaluate.ipynb \
	notebooks/pipelines/promote.ipynb notebooks/generative.ipynb \
	notebooks/model_quality.ipynb notebooks/frameworks.ipynb
test-notebooks: setup
	home=$$(mktemp -d /tmp/kernel-magics-nbval.XXXXXX); \
	KERNEL_MAGICS_HOME=$$home KERNEL_MAGICS_PROGRESS=text \
		$(BIN)/pytest --nbval-lax $(NOTEBOOKS) -q -p no:cacheprovider; \
	status=$$?; KERNEL_MAGICS_HOME=$$home $(BIN)/kernel-magics serve stop >/dev/null 2>&1; \
	rm -rf $$home; exit $$status

# The pre-commit hooks on every tracked file (ruff check and format, codespell, the TOML and
# YAML checks: .pre-commit-config.yaml), mypy on the package, then the Models panel's eslint and
# prettier check (the JupyterLab extension template's settings) and its unit test.
lint: setup $(EXT_STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/pre-commit run --all-files --show-diff-on-failure
	$(BIN)/mypy
	cd extension && PATH=$(abspath $(BIN)):$$PATH jlpm lint:check && \
		PATH=$(abspath $(BIN)):$$PATH jlpm test

# The panel's node_modules, installed once (the install of the project may have made it
# already: hatch-jupyter-builder runs jlpm there); again when its package list changes.
# jlpm comes with JupyterLab, in the venv.
$(EXT_STAMP): extension/package.json extension/yarn.lock | $(STAMP)
	cd extension && PATH=$(abspath $(BIN)):$$PATH jlpm install
	touch $@

# wrk (Debian) is the load generator; without it the benchmark uses its bounded Python client.
bench: setup
	@command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null 2>&1 || \
		echo "wrk not installed: the benchmark falls back to its Python load client"
	$(BIN)/python bench/serving.py

# Language models beside their peer, `transformers serve --continuous-batching` (its extra is
# installed here, not by setup: the tests do not need it); ≈ 7 min, bench/results-generate.md.
bench-generate: setup
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[bench-generative]'
	$(BIN)/python bench/generate.py

clean:
	rm -rf $(VENV) $(MLSERVER_VENV) $(DEMO_OUT) build *.egg-info kernel_magics/lab/labextension \
		extension/lib extension/node_modules extension/tsconfig.tsbuildinfo
