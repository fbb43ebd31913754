# railguard: `make run` starts it with the example configs, `make test` runs the whole suite.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint system-packages node-packages bench precision clean

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: install
	./examples/run.sh

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Debian packages the tests use: Chromium (the chat page's browser tests), redis-server
# (the thread store's tests start their own), openssl (certificates for a TLS Redis) and
# Node.js with npm (the openai Node SDK's tests). Installed when missing (root, as in CI).
SYSTEM_PACKAGES := chromium redis-server openssl
system-packages:
	@missing=""; for cmd in $(SYSTEM_PACKAGES); do command -v $$cmd >/dev/null || missing="$$missing $$cmd"; done; \
	command -v node >/dev/null && command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

# The openai Node SDK for tests/test_node_sdk.py, as locked in tests/node/package-lock.json.
NODE_STAMP := tests/node/node_modules/.package-lock.json
node-packages: $(NODE_STAMP)

$(NODE_STAMP): tests/node/package.json tests/node/package-lock.json | system-packages
	npm ci --prefix tests/node --no-audit --no-fund --loglevel=error

test: lint system-packages node-packages
	$(VENV)/bin/pytest

bench: install
	$(PY) bench/run.py
	$(PY) bench/rails_perf.py
	$(PY) bench/threads.py
	$(PY) bench/workers.py
	$(PY) bench/python_api.py

precision: install
	$(PY) bench/precision_recall.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
