# Quick start on a machine with only Python 3.11 and pip:  make demo  then  make test
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
PROFILE ?= demo
SHARD  ?= 0
SHARD6  = $(shell printf %06d $(SHARD))
export RAY_AUTH_MODE = disabled
export HF_HUB_OFFLINE = 1

.PHONY: venv demo render test test-fast lint format clean browser

venv: $(STAMP)

# Pinned through constraints.txt: unpinned, pip swaps torch and numpy (bpy needs numpy 1.x).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(PY) -c "import bpy, torch, ray, webdataset; print('venv ok: bpy', bpy.app.version_string, 'torch', torch.__version__)"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m curation.render --profile $(PROFILE) --shard $(SHARD)
	$(PY) -m shards.inspect outputs/$(PROFILE)/renders/shard-$(SHARD6).tar
	$(PY) -m curation.render --profile $(PROFILE) --shard $(SHARD) --set render.mode=static
	$(PY) -m shards.inspect outputs/$(PROFILE)/static/renders/shard-$(SHARD6).tar
	$(PY) -m curation.report outputs/$(PROFILE)
	$(PY) -m curation.encode_latents --profile $(PROFILE) --shard $(SHARD)
	$(PY) -m curation.encode_latents --profile $(PROFILE) --shard $(SHARD) --set render.mode=static
	$(PY) -m model.train --profile $(PROFILE) --resume
	$(PY) -m model.sample outputs/$(PROFILE)/renders/shard-$(SHARD6).tar --profile $(PROFILE)
	$(PY) -m fit4d.run --profile $(PROFILE) outputs/$(PROFILE)/renders/shard-$(SHARD6).tar --limit 1 --set fit4d.orbit=dynamic
	$(PY) -m evaluation.run --profile $(PROFILE) --no-progress
	@echo "demo done: outputs/$(PROFILE)/{renders,latents,contact_sheets,report,checkpoints,samples,fit4d,evaluation}"

render: $(STAMP)
	$(PY) -m curation.render --profile $(PROFILE) --shard $(SHARD)

test: $(STAMP) browser
	$(PY) -m pytest -q --timeout=900

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --timeout=300

# Headless Chromium for the page tests (tests/browser.py): Debian's package, installed where we are root with
# apt-get (as CI is; waiting up to 5 minutes for another apt to finish); elsewhere a message, and those tests
# skip. BROWSER_INSTALL=0 never installs.
BROWSER_INSTALL ?= 1
BROWSER_LOG ?= $${TMPDIR:-/tmp}/sv4d2-chromium-install.log
browser: $(STAMP)
	@if $(PY) -m tests.browser --find >/dev/null 2>&1; then \
	  echo "browser: $$($(PY) -m tests.browser --find)"; \
	elif [ "$(BROWSER_INSTALL)" = 1 ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "browser: installing Debian's chromium for the page tests (apt-get: 1-3 minutes, once)"; \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	      -o DPkg::Lock::Timeout=300 chromium; } >$(BROWSER_LOG) 2>&1 \
	  && $(PY) -m tests.browser --find \
	  || { tail -n 20 $(BROWSER_LOG); echo "browser: apt-get did not install a chromium that" \
	      "tests/browser.py finds (above: the end of $(BROWSER_LOG)); make test BROWSER_INSTALL=0" \
	      "runs the tests without it" >&2; exit 1; }; \
	else \
	  echo "browser: no chromium here, and it cannot be installed (needs root and apt-get, or" \
	    "BROWSER_INSTALL=0 was given): the page tests will skip"; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf outputs .pytest_cache
