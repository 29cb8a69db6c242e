# tasktune: `make demo` runs the whole pipeline on the embedded tiny model; `make test` runs the tests.
# Every target installs what it needs into .venv first.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
TT     := $(BIN)/tasktune

SPEC   ?= templates/grid/spec.yaml
SEED   ?= 42
N      ?=
DATA   ?= data/grid
# The embedded tiny base, shipped built (`tasktune tiny-model --spec grid --seed 42`, docs/tiny-model.md);
# `make tiny-model` rebuilds it into TINY_OUT, and MODEL=$(TINY_OUT) trains on the rebuilt one.
SHIPPED_MODEL := templates/demo/tiny-glm
MODEL  ?= $(SHIPPED_MODEL)
TINY_OUT ?= models/tiny-glm
# The shipped base was built on a GPU (minutes; on 2 CPU cores the same build takes over an hour, other bits)
TINY_DEVICE ?= $(if $(shell command -v nvidia-smi 2>/dev/null),cuda,cpu)
RUN    ?= runs/grid-tiny
STEPS  ?=
GPUS   ?= 1
TRAIN_CONFIG ?= templates/demo/train-tiny.yaml
ARGS   ?=
# The exact versions the tests passed with (pip constraints); LOCK= (empty) installs the newest in the ranges.
LOCK   ?= locks/cpu.txt
EXTRAS ?= dev
LATEST := .venv-latest
CPU_TORCH := torch==2.13.0
PORT   ?= 8000
# `make test-clients`: real third-party clients (Python ones in CLIENTS_VENV, JavaScript ones under CLIENTS_NODE)
CLIENTS_VENV := .venv-clients
CLIENTS_NODE := build/clients
CLIENTS_SPEC := tests/serve/clients

.PHONY: help install lock test-latest serve test test-slow test-all test-clients data tiny-model train eval chat demo compare bench clean

help:
	@echo "make demo        data -> train -> eval on the shipped tiny base, then base vs tuned answers (CPU, minutes)"
	@echo "make test        install if needed, then run the default test suite"
	@echo "make serve       tasktune serve $(RUN) on 127.0.0.1:$(PORT) with the simulated grid actions (after make demo)"
	@echo "make test-slow   the slow tests (long training runs)"
	@echo "make test-clients real clients (openai, LangChain, LiteLLM, openai-node, AI SDK) against a live server"
	@echo "make test-latest the suite on the newest versions inside pyproject's ranges (in $(LATEST)), not the lock"
	@echo "make lock        rewrite $(LOCK) from what .venv holds (after make test passed)"
	@echo "make data        tasktune data $(SPEC) --out $(DATA) --seed $(SEED)"
	@echo "make tiny-model  rebuild the shipped tiny base into $(TINY_OUT) (tokenizer + small GLM, pre-trained on unpaired text)"
	@echo "make train       tasktune train on $(DATA) into $(RUN)   (GPUS=N: data-parallel, N x the global batch)"
	@echo "make eval        base vs tuned answers on the dev set, report in $(RUN)/eval/"
	@echo "make chat        talk to $(RUN) at the terminal (type framed prompts, as in $(DATA)/dev.json)"
	@echo "make compare     every tuning method on $(DATA) with one step budget, into runs/compare"
	@echo "make bench       the data generation benchmark (benchmarks/datagen_bench.py)"
	@echo "make test-all    the default and the slow tests"
	@echo "make clean       remove data/, runs/ and models/"
	@echo "variables: SPEC SEED N DATA MODEL TINY_OUT TINY_DEVICE RUN STEPS GPUS TRAIN_CONFIG ARGS"

install: $(STAMP)

# CPU machines take the CPU build of torch that lies on disk (an open range would pull a CUDA build);
# everything else comes at the locked versions, so a fresh clone gets what CI tested.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/python -m pip install -q $(CPU_TORCH); fi
	$(BIN)/python -m pip install -q $(if $(LOCK),-c $(LOCK)) -e '.[$(EXTRAS)]'
	touch $(STAMP)

lock: install
	{ sed -n '1,/^# apart/p' $(LOCK); $(BIN)/python -m pip freeze --exclude-editable | grep -v '^torch==' | grep -v '^#'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)

# Drift check: the newest releases inside pyproject's ranges, in a venv of their own.
test-latest:
	test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(LATEST)/bin/python -m pip install -q $(CPU_TORCH); fi
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e '.[$(EXTRAS)]'
	$(LATEST)/bin/python -m pip freeze | grep -iE '^(transformers|peft|accelerate|datasets|tokenizers|bitsandbytes)=='
	$(LATEST)/bin/python -m pytest -q $(ARGS)

test: install
	$(BIN)/python -m pytest -q $(ARGS)

test-slow: install
	$(BIN)/python -m pytest -q -m slow $(ARGS)

test-all: install
	$(BIN)/python -m pytest -q -m 'slow or not slow' $(ARGS)

# The clients at the versions $(CLIENTS_SPEC)/requirements.txt and package.json pin, each in its own place (no torch
# in $(CLIENTS_VENV)); their scripts run against a live server started by the tests (tests/serve/test_real_clients.py)
$(CLIENTS_VENV)/.installed-stamp: $(CLIENTS_SPEC)/requirements.txt
	test -x $(CLIENTS_VENV)/bin/python || $(PYTHON) -m venv $(CLIENTS_VENV)
	$(CLIENTS_VENV)/bin/python -m pip install -q --upgrade pip
	$(CLIENTS_VENV)/bin/python -m pip install -q -r $(CLIENTS_SPEC)/requirements.txt
	touch $@

$(CLIENTS_NODE)/.installed-stamp: $(CLIENTS_SPEC)/package.json $(CLIENTS_SPEC)/package-lock.json
	mkdir -p $(CLIENTS_NODE)
	cp $(CLIENTS_SPEC)/package.json $(CLIENTS_SPEC)/package-lock.json $(CLIENTS_NODE)/
	cd $(CLIENTS_NODE) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

test-clients: install $(CLIENTS_VENV)/.installed-stamp $(CLIENTS_NODE)/.installed-stamp
	$(BIN)/python -m pytest -q -m clients tests/serve/test_real_clients.py $(ARGS)

data: install
	$(TT) data $(SPEC) --out $(DATA) --seed $(SEED) $(if $(N),--n $(N)) $(ARGS)

tiny-model: install
	$(TT) tiny-model --spec $(SPEC) --out $(TINY_OUT) --seed $(SEED) --device $(TINY_DEVICE) $(ARGS)

train: install
ifeq ($(GPUS),1)
	$(TT) train --config $(TRAIN_CONFIG) --model $(MODEL) --data $(DATA) --out $(RUN) --seed $(SEED) $(if $(STEPS),--max-steps $(STEPS)) $(ARGS)
else
	$(BIN)/torchrun --standalone --nproc-per-node $(GPUS) -m tasktune train --config $(TRAIN_CONFIG) --model $(MODEL) --data $(DATA) --out $(RUN) --seed $(SEED) $(if $(STEPS),--max-steps $(STEPS)) $(ARGS)
endif

eval: install
	$(TT) eval $(RUN) $(ARGS)

chat: install
	$(TT) chat $(RUN) $(ARGS)

demo: install
	$(MAKE) data
	$(MAKE) train
	$(MAKE) eval
	$(BIN)/python -m tasktune.tuning.evaluation.report $(RUN)

serve: install
	$(TT) serve $(RUN) --port $(PORT) --spec $(notdir $(RUN))=$(SPEC) --actions grid $(ARGS)

compare: install
	$(TT) compare --model $(MODEL) --data $(DATA) --out runs/compare $(ARGS)

bench: install
	$(BIN)/python benchmarks/datagen_bench.py

clean:
	rm -rf data runs models
