# Every target runs inside .venv (made by `make install`).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NPROC := $(shell nproc 2>/dev/null || echo 2)

SAMPLE := data/sample
INPUT ?= $(SAMPLE)
SPLIT ?= DET/train
VAL_SPLIT ?= DET/val
OUT ?= out
OUTPUT ?= $(OUT)/shards/train
VAL_OUTPUT ?= $(OUT)/shards/val
JOB ?= $(OUT)/job
BACKBONE ?= InceptionResNetV2
WEIGHTS ?= none
# Left empty, rpn-preprocess takes its own defaults: on this machine one worker
# process per core with one TensorFlow thread each, and shards decided by the
# runner (closed at --max_shard_mb, 1 GB), which keeps memory flat; 16 fixed
# shards on other runners. At scale, e.g. RUNNER=DataflowRunner NUM_SHARDS=256
# BEAM_ARGS="--project P --region R --temp_location gs://...".
NUM_SHARDS ?=
VAL_NUM_SHARDS ?= $(NUM_SHARDS)
EPOCHS ?= 10
# auto: VGG16 with the real weights file when one is found (RPN_VGG16_WEIGHTS,
# else shared/weights beside the checkout), else the small random conv net
# (a deep net's random features carry almost no signal; see docs/demo.md).
DEMO_BACKBONE ?= auto
DEMO_WEIGHTS ?= auto
DEMO_EPOCHS ?=
RUNNER ?=
BEAM_ARGS ?=
BACKBONE_THREADS ?=
PREPROCESS_ARGS ?=
# tiles (the method) or maps: one record per image, rpn-train draws the targets
# every epoch with the anchors it is given (docs/choosing-settings.md).
LAYOUT ?=
# RECOMMENDED=out/anchors/anchors.json: rpn-preprocess also gets the
# recommended_flags of that rpn-anchors report (make anchors writes it there).
RECOMMENDED ?=
RECOMMENDED_FLAGS = $(if $(RECOMMENDED),$(shell $(BIN)/python -c 'import json, shlex, sys; \
  print(shlex.join(json.load(open(sys.argv[1]))["recommended_flags"]))' $(RECOMMENDED)))
PREPROCESS_FLAGS = --backbone $(BACKBONE) --weights $(WEIGHTS) $(if $(LAYOUT),--layout $(LAYOUT)) \
  $(if $(RUNNER),--runner $(RUNNER)) $(if $(BACKBONE_THREADS),--backbone_threads $(BACKBONE_THREADS)) \
  $(RECOMMENDED_FLAGS) $(PREPROCESS_ARGS) $(BEAM_ARGS)
TEST_ARGS ?=

.PHONY: install sample-data preprocess preprocess-portable anchors train propose export evaluate demo lint test test-fast bench bench-propose quality quality-real gpu-check draw clean

install: $(STAMP)

$(STAMP): setup.py pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

sample-data: $(STAMP)
	$(BIN)/rpn-sample-data --output $(SAMPLE)

$(SAMPLE)/Data: | $(STAMP)
	$(BIN)/rpn-sample-data --output $(SAMPLE)

preprocess: $(STAMP) $(if $(filter $(SAMPLE),$(INPUT)),$(SAMPLE)/Data)
	$(BIN)/rpn-preprocess --input $(INPUT) --split $(SPLIT) --output $(OUTPUT) \
	  $(if $(NUM_SHARDS),--num_shards $(NUM_SHARDS)) $(PREPROCESS_FLAGS)
	$(BIN)/rpn-preprocess --input $(INPUT) --split $(VAL_SPLIT) --output $(VAL_OUTPUT) \
	  $(if $(VAL_NUM_SHARDS),--num_shards $(VAL_NUM_SHARDS)) $(PREPROCESS_FLAGS)

# The same pipeline on Beam's portable job service with an external worker
# pool (how Flink runs Python pipelines); the script starts and stops both.
preprocess-portable: $(STAMP) $(if $(filter $(SAMPLE),$(INPUT)),$(SAMPLE)/Data)
	$(BIN)/python -m pipeline.commands.portable -- --input $(INPUT) --split $(SPLIT) \
	  --output $(OUT)/shards/portable --backbone $(BACKBONE) --weights $(WEIGHTS) \
	  --num_shards $(or $(NUM_SHARDS),0) --backbone_threads $(or $(BACKBONE_THREADS),1) $(PREPROCESS_ARGS)

# The recommended rpn-preprocess flags for SPLIT's images and BACKBONE (at
# FEATURE_LAYER where given, else the backbone's recommended layers), anchor
# coverage and a suggested set; no forward pass. Then
# make preprocess RECOMMENDED=$(ANCHORS_OUT)/anchors.json uses them.
FEATURE_LAYER ?=
ANCHORS_OUT ?= $(OUT)/anchors
anchors: $(STAMP) $(if $(filter $(SAMPLE),$(INPUT)),$(SAMPLE)/Data)
	$(BIN)/rpn-anchors --input $(INPUT) --split $(SPLIT) --output $(ANCHORS_OUT) \
	  --backbone $(BACKBONE) $(if $(FEATURE_LAYER),--feature_layer $(FEATURE_LAYER)) \
	  $(if $(RUNNER),--runner $(RUNNER)) $(ANCHORS_ARGS) $(BEAM_ARGS)

draw: $(STAMP)
	$(BIN)/rpn-draw --shards $(OUTPUT) --input $(INPUT) --split $(SPLIT) --output $(OUT)/pictures/anchors $(DRAW_ARGS)

train: $(STAMP)
	$(BIN)/rpn-train --data $(OUTPUT) --val_data $(VAL_OUTPUT) --job_dir $(JOB) --epochs $(EPOCHS) $(TRAIN_ARGS)

# rpn-propose is a Beam pipeline: RUNNER and BEAM_ARGS as for preprocess;
# MAPS=DIR proposes from a maps dataset of the job's backbone (head only).
MAPS ?=
propose: $(STAMP)
	$(BIN)/rpn-propose --job_dir $(JOB) $(if $(MAPS),--maps $(MAPS),--input $(INPUT) --split $(VAL_SPLIT)) \
	  --output $(OUT)/proposals $(if $(RUNNER),--runner $(RUNNER)) $(PROPOSE_ARGS) $(BEAM_ARGS)

# rpn-export: the job as a SavedModel (image bytes in, proposals out) in $(OUT)/export.
export: $(STAMP)
	$(BIN)/rpn-export --job_dir $(JOB) --output $(OUT)/export $(EXPORT_ARGS)

evaluate: $(STAMP)
	$(BIN)/rpn-evaluate --proposals $(OUT)/proposals --input $(INPUT) --split $(VAL_SPLIT)

demo: $(STAMP)
	$(BIN)/python -m trainer.demo --out $(OUT) --backbone $(DEMO_BACKBONE) --weights $(DEMO_WEIGHTS) \
	  $(if $(DEMO_EPOCHS),--epochs $(DEMO_EPOCHS)) $(if $(LAYOUT),--layout $(LAYOUT)) $(DEMO_ARGS)

# ruff (lint and import order, configured in pyproject.toml) checks the whole
# tree, setup.py included, before the tests.
lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest tests -q -ra $(TEST_ARGS)

test-fast: lint
	$(BIN)/python -m pytest tests -q -ra -m "not slow" $(TEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench.run

# rpn-propose's rate per core from images and from maps, its workers' memory,
# and the projection for ILSVRC DET train (BENCHMARKS.md, section 18).
bench-propose: $(STAMP)
	$(BIN)/python -m bench.propose_scale $(BENCH_PROPOSE_ARGS)

# Proposal quality on real features (VGG16 weights from RPN_VGG16_WEIGHTS or
# ../shared/weights): three settings trained and evaluated on the same held-out
# sample images; then real photographs with boxes (the ILSVRC-layout root in RPN_REAL_PHOTOS)
# over 3 seeds beside Selective Search (OpenCV contrib: the bench extra, which
# the test extra includes).
REAL_ARGS ?=
quality: $(STAMP)
	$(BIN)/python -m bench.quality $(QUALITY_ARGS)
	$(BIN)/python -m bench.real_photos $(REAL_ARGS)

quality-real: $(STAMP)
	$(BIN)/python -m bench.real_photos $(REAL_ARGS)

# The one check to run on a GPU machine before a release (under 5 minutes):
# 2 epochs on its own sample shards on the CPU, the GPU(s) and in mixed
# precision; the losses must be finite and agree. Without a GPU it says so
# and exits 0. GPU machines need the gpu extra: pip install -e '.[gpu]'.
gpu-check: $(STAMP)
	$(BIN)/python -m trainer.gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf $(OUT) data
