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
MODEL  ?= models/tiny-glm
RUN    ?= runs/grid-tiny
STEPS  ?=
GPUS   ?= 1
TRAIN_CONFIG ?= templates/demo/train-tiny.yaml
ARGS   ?=

.PHONY: help install test test-slow test-all data tiny-model train eval chat demo compare bench clean

help:
	@echo "make demo        data -> tiny model -> train -> eval on the embedded default (CPU, minutes)"
	@echo "make test        install if needed, then run the default test suite"
	@echo "make test-slow   the slow tests (long training runs)"
	@echo "make data        tasktune data $(SPEC) --out $(DATA) --seed $(SEED)"
	@echo "make tiny-model  build $(MODEL) (tokenizer + small GLM, briefly pre-trained on unpaired text)"
	@echo "make train       tasktune train on $(DATA) into $(RUN)   (GPUS=N: data-parallel, N x the global batch)"
	@echo "make eval        base vs tuned answers on the dev set, report in $(RUN)/eval/"
	@echo "variables: SPEC SEED N DATA MODEL RUN STEPS GPUS TRAIN_CONFIG ARGS"

install: $(STAMP)

# CPU machines take the CPU build of torch that lies on disk (an open range would pull a CUDA build).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/python -m pip install -q torch==2.13.0; fi
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q $(ARGS)

test-slow: install
	$(BIN)/python -m pytest -q -m slow $(ARGS)

test-all: install
	$(BIN)/python -m pytest -q -m 'slow or not slow' $(ARGS)

data: install
	$(TT) data $(SPEC) --out $(DATA) --seed $(SEED) $(if $(N),--n $(N)) $(ARGS)

tiny-model: install
	$(TT) tiny-model --spec $(SPEC) --out $(MODEL) --seed $(SEED) $(ARGS)

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
	$(MAKE) tiny-model
	$(MAKE) train
	$(MAKE) eval

compare: install
	$(TT) compare --model $(MODEL) --data $(DATA) --out runs/compare $(ARGS)

bench: install
	$(BIN)/python benchmarks/datagen_bench.py

clean:
	rm -rf data runs models
