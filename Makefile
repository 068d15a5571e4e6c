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

.PHONY: venv demo render test test-fast lint format clean

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
	$(PY) -m model.train --profile $(PROFILE)
	$(PY) -m fit4d.run --profile $(PROFILE) outputs/$(PROFILE)/renders/shard-$(SHARD6).tar --limit 1
	@echo "demo done: outputs/$(PROFILE)/{renders,latents,contact_sheets,report,checkpoints}"

render: $(STAMP)
	$(PY) -m curation.render --profile $(PROFILE) --shard $(SHARD)

test: $(STAMP)
	$(PY) -m pytest -q --timeout=900

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --timeout=300

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf outputs .pytest_cache
