# ResNet across frameworks: every user-facing command. Each target that needs Python depends on the
# virtual environment, which is created (or updated when requirements.txt changes) on first use.
# SYSTEM_PYTHON=1 uses the interpreter on PATH ($(PYTHON3)) instead, e.g. a GPU container's own PyTorch:
# no venv is built or touched, and each target first checks only the imports it needs (shared/requires.py).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    ?= .venv
PYTHON3 ?= python3
SYSTEM_PYTHON ?=
ifneq ($(filter-out 0 no false,$(SYSTEM_PYTHON)),)
PY      := $(PYTHON3)
STAMP   := system-python
else
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
endif

# Model / data / training knobs shared by several targets (empty = the command's own default).
MODEL       ?= resnet20
FRAMEWORK   ?= torch
NUM_CLASSES ?=
SHORTCUT    ?=
DATASET     ?= cifar10
LABELS      ?=
DATA_DIR    ?= data
EPOCHS      ?=
ITERS       ?=
BATCH_SIZE  ?=
LR          ?=
SEED        ?=
OUT         ?=
RESUME      ?=
DEVICE      ?=
AMP         ?=
COMPILE     ?=
CHANNELS_LAST ?=
JIT         ?=
THREADS     ?=
RUN         ?=
ONNX        ?=
IMAGES      ?=
TOPK        ?=
ABLATION    ?= cifar10
FRAMEWORKS  ?= torch,keras
PYTEST_ARGS ?=
# Keras backend of every Keras command (summary, compare, onnx-parity, convert, train, export, bench, ablation).
BACKEND     ?= $(or $(KERAS_BACKEND),tensorflow)
KERAS_BACKENDS := tensorflow jax torch
ifeq ($(filter $(KERAS_BACKENDS),$(BACKEND)),)
$(error BACKEND must be one of: $(KERAS_BACKENDS); got '$(BACKEND)')
endif
export KERAS_BACKEND := $(BACKEND)

opt = $(if $(2),$(1) $(2))
# $(call given,--flag,VAR): the flag only when VAR was set on the command line or in the environment (not
# this file's default), so that --resume hears only what the user asked for
given = $(if $(filter command line environment,$(origin $(2))),$(1) $($(2)))
comma := ,
space := $(subst ,, )
MODEL_ARGS = --model $(MODEL) $(call opt,--num-classes,$(NUM_CLASSES)) $(call opt,--shortcut,$(SHORTCUT))
FW_PKG = $(if $(filter keras,$(FRAMEWORK)),keras_impl,$(if $(filter torch,$(FRAMEWORK)),pytorch_impl,$(error FRAMEWORK must be torch or keras; got '$(FRAMEWORK)')))
TRAIN_ARGS = $(call given,--model,MODEL) $(call given,--dataset,DATASET) $(call opt,--labels,$(LABELS)) --data-dir $(DATA_DIR) \
	$(call opt,--num-classes,$(NUM_CLASSES)) $(call opt,--shortcut,$(SHORTCUT)) \
	$(call opt,--epochs,$(EPOCHS)) $(call opt,--iters,$(ITERS)) $(call opt,--batch-size,$(BATCH_SIZE)) \
	$(call opt,--lr,$(LR)) $(call opt,--seed,$(SEED)) $(call opt,--out,$(OUT)) $(call opt,--resume,$(RESUME)) \
	$(call opt,--device,$(DEVICE)) $(call opt,--amp,$(AMP)) $(call opt,--compile,$(COMPILE)) \
	$(call opt,--channels-last,$(CHANNELS_LAST)) $(call opt,--jit,$(JIT)) $(call opt,--threads,$(THREADS))

.PHONY: help setup test test-all test-slow test-mutants lint format summary compare compare-all convert data \
	bench-data train-torch train-keras export infer onnx-parity quantize bench-deploy deploy-check ablation bench \
	gpu-report gpu-full-run clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

ifeq ($(STAMP),system-python)
.PHONY: system-python
system-python:
	@$(PY) -m shared.requires $(filter-out system-python,$(MAKECMDGOALS)) --framework $(FRAMEWORK) \
		$(call opt,--variants,$(subst $(space),$(comma),$(strip $(BENCH_VARIANTS) $(BENCH_FRAMEWORKS)))) $(call opt,--backend,$(BACKEND))
else
$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON3) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@# one process per framework: importing torch and tensorflow together can crash the interpreter
	@$(PY) -c "import torch, onnxruntime; print('installed: torch', torch.__version__, '| onnxruntime', onnxruntime.__version__)"
	@$(PY) -c "import tensorflow, keras, jax; print('installed: tensorflow', tensorflow.__version__, '| keras', keras.__version__, '| jax', jax.__version__)" 2>/dev/null
	@touch $@
endif

setup: $(STAMP) ## create/update the virtual environment (.venv) from requirements.txt
	@echo "environment ready: $(if $(filter system-python,$(STAMP)),$(PY) (SYSTEM_PYTHON=1),$(VENV) (requirements.txt unchanged since the last install))"

test: $(STAMP) ## fast test suite (each framework in its own pytest process)
	$(PY) -m tests.run -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP) ## every test, slow cases included
	$(PY) -m tests.run $(PYTEST_ARGS)

test-times: $(STAMP) ## make test, and where its time went: results/test-times.md
	$(PY) -m tests.run --times=results -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP) ## only the slow cases
	$(PY) -m tests.run -m slow $(PYTEST_ARGS)

lint: $(STAMP) ## ruff
	$(PY) -m ruff check .

format: $(STAMP) ## ruff --fix
	$(PY) -m ruff check --fix .

summary: $(STAMP) ## the framework's own summary: make summary MODEL=resnet34 FRAMEWORK=torch|keras
	$(PY) -m $(FW_PKG).summary $(MODEL_ARGS)

readme: $(STAMP) ## the README's generated blocks (make help, the deployment matrix) from the files they come from
	$(PY) -m shared.readme_blocks

clean: ## remove caches (keeps .venv, data, runs and results)
	rm -rf .pytest_cache .ruff_cache artifacts
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

# Cross-framework harness: side-by-side comparison, parity, weight conversion.
FROM         ?= torch
TO           ?= keras
SRC          ?=
PRETRAINED   ?=
WEIGHTS_FILE ?=
RANDOM       ?=
INCLUDE_1202 ?=
# convert: --model only when MODEL was given or there is no source file to read the spec from
CONVERT_SPEC = $(if $(or $(filter command line environment,$(origin MODEL)),$(if $(SRC),,1)),$(MODEL_ARGS),\
	$(call opt,--num-classes,$(NUM_CLASSES)) $(call opt,--shortcut,$(SHORTCUT)))
CONVERT_SOURCE = $(call opt,--src,$(SRC)) $(call opt,--random,$(RANDOM)) $(call opt,--weights-file,$(WEIGHTS_FILE)) \
	$(if $(PRETRAINED),--pretrained $(filter-out 1 yes true,$(PRETRAINED)))

compare: $(STAMP) ## side-by-side PyTorch|Keras table, totals, parity: make compare MODEL=resnet34 [NUM_CLASSES=2] [SHORTCUT=B]
	$(PY) -m shared.harness.compare $(MODEL_ARGS)

compare-all: $(STAMP) ## one line per registry model -> results/compare-all.md (INCLUDE_1202=1 adds resnet1202/plain1202)
	$(PY) -m shared.harness.compare --all $(if $(INCLUDE_1202),--include-1202) --out-dir artifacts/compare
	mkdir -p results && cp artifacts/compare/all.md results/compare-all.md && cp artifacts/compare/all.json results/compare-all.json

convert: $(STAMP) ## weights across frameworks: make convert FROM=torch TO=keras MODEL=resnet34 PRETRAINED=1 OUT=r34.weights.h5
	$(PY) -m export.transfer --from $(FROM) --to $(TO) --out $(or $(OUT),$(error OUT=file is required, e.g. OUT=model.weights.h5)) \
		$(CONVERT_SPEC) $(or $(strip $(CONVERT_SOURCE)),--init)

# ONNX export, ONNX Runtime inference and the native-vs-ONNX parity report (export/). With RUN, FRAMEWORK is passed
# only when given explicitly (the run's own framework by default; the other one exports its weights too).
INPUT_SIZE   ?=
PARITY_LIMIT ?=
PROVIDER     ?=
OPSET        ?=
PRECISION    ?=
FORMAT       ?=
RUNTIME      ?=
EXPORT_FW = $(if $(RUN),$(if $(filter-out file default,$(origin FRAMEWORK)),--framework $(FRAMEWORK)),--framework $(FRAMEWORK))

export: $(STAMP) ## export: make export RUN=runs/... [FORMAT=onnx|pt2|saved_model|litert|openvino] [FRAMEWORK=keras] [OUT=] [OPSET=18]
	$(PY) -m export.onnx_export $(if $(RUN),--run $(RUN),$(MODEL_ARGS)) $(EXPORT_FW) \
		$(call opt,--input-size,$(INPUT_SIZE)) $(call opt,--seed,$(SEED)) $(call opt,--out,$(OUT)) \
		$(call opt,--opset,$(OPSET)) $(call opt,--format,$(FORMAT))

# IMAGES: files, folders (recursive) and glob patterns, each quoted so that Python (not the shell) expands them.
infer: $(STAMP) ## classify images: make infer ONNX=model.onnx IMAGES="a.jpg dir/ 'x/*.png'" [OUT=p.csv] [RUNTIME=openvino|opencv]
	$(PY) -m export.infer $(if $(ONNX),$(ONNX),$(if $(RUN),$(RUN)/model.onnx)) $(foreach i,$(IMAGES),'$(i)') \
		$(call opt,--topk,$(TOPK)) $(call opt,--out,$(OUT)) $(call opt,--batch-size,$(BATCH_SIZE)) \
		$(call opt,--provider,$(PROVIDER)) $(call opt,--runtime,$(RUNTIME))

onnx-parity: $(STAMP) ## native model vs its ONNX export in ONNX Runtime: make onnx-parity RUN=runs/... [ONNX=f.onnx] [OUT=dir]
	$(PY) -m export.parity $(if $(RUN),--run $(RUN)) $(call opt,--onnx,$(ONNX)) $(call opt,--out,$(OUT)) \
		--data-dir $(DATA_DIR) $(call opt,--limit,$(PARITY_LIMIT)) $(call opt,--opset,$(OPSET))

# int8 (ORT static QDQ, calibrated on the run's training split) or fp16 next to the float32 export, with a
# report <name>.<precision>.md/.json: accuracy, top-1 agreement, max|dlogit|, ORT speed against float32.
quantize: $(STAMP) ## int8/fp16 ONNX + accuracy/speed report: make quantize RUN=runs/... [PRECISION=int8|fp16] [FRAMEWORK=keras]
	$(PY) -m export.quantize --run $(or $(RUN),$(error RUN=run folder is required)) $(EXPORT_FW) \
		--data-dir $(DATA_DIR) $(call opt,--precision,$(PRECISION)) $(call opt,--onnx,$(ONNX)) $(call opt,--out,$(OUT))

DEPLOY_OUT ?= results/deploy
DEPLOY_IMAGES ?=
bench-deploy: $(STAMP) ## runtimes side by side, int8/fp16 vs float32, make-infer speed: make bench-deploy RUN="runs/a runs/b"
	$(PY) -m export.bench_deploy $(foreach r,$(or $(RUN),$(error RUN=run folder(s) is required)),--run $(r)) \
		--data-dir $(DATA_DIR) --out $(or $(OUT),$(DEPLOY_OUT)) $(call opt,--images,$(DEPLOY_IMAGES))

# The deployment matrix (export/deploy_check.py): every format from each source (SOURCES=torch,keras-tensorflow,
# keras-jax,keras-torch) in every runtime that loads it (RUNTIMES=...), against the native model, written to
# <run>/deploy-check.md/.json (or OUT). FORMATS=onnx,pt2,... and OPSETS=18,17 narrow it; LIMIT=N images.
SOURCES  ?=
FORMATS  ?=
OPSETS   ?=
RUNTIMES ?=
LIMIT    ?=
deploy-check: $(STAMP) ## every export in every runtime, vs the native model: make deploy-check RUN=runs/... [SOURCES=] [OUT=dir]
	$(PY) -m export.deploy_check --run $(or $(RUN),$(error RUN=run folder is required)) --data-dir $(DATA_DIR) \
		$(call opt,--sources,$(SOURCES)) $(call opt,--formats,$(FORMATS)) $(call opt,--opsets,$(OPSETS)) \
		$(call opt,--runtimes,$(RUNTIMES)) $(call opt,--limit,$(LIMIT)) $(call opt,--out,$(OUT))

# Training (pytorch_impl/train.py, keras_impl/train.py): the same flags, recipe and run folder.
# NPROC=N runs torch with DDP on N processes (torchrun's variables, at most one per visible GPU),
# and Keras on BACKEND=jax on N processes joined by keras.distribution.initialize (gloo on the CPU);
# STRATEGY=mirrored forces Keras' MirroredStrategy (TensorFlow) or DataParallel (JAX).
NPROC    ?=
STRATEGY ?=

train-torch: $(STAMP) ## train with PyTorch: make train-torch MODEL=resnet20 DATASET=cifar10 [EPOCHS=|ITERS=] [AMP=1] [NPROC=2]
	$(PY) -m pytorch_impl.train $(TRAIN_ARGS) $(call opt,--nproc,$(NPROC))

train-keras: $(STAMP) ## train with Keras: make train-keras MODEL=resnet20 DATASET=cifar10 [EPOCHS=|ITERS=] [AMP=1] [JIT=1]
	$(PY) -m keras_impl.train $(TRAIN_ARGS) $(call opt,--strategy,$(STRATEGY)) $(call opt,--nproc,$(NPROC))

# Ablation (shared/ablation/run.py): plain vs residual twins for the same epochs in both frameworks, then
# $(ABLATION_OUT)/ablation-<name>.md/.json/-error.png/-loss.png. Runs train in runs/ablation/<name>/seed-<k>/;
# re-running skips finished runs and resumes an interrupted one. SEEDS=0,1,2 (or SEEDS=3) trains every cell
# once per seed (default: one seed, SEED or 0); adding a seed later trains only that seed. DATASET is passed
# only when given on the command line (DATASET=digits: real images, offline), else the ablation's own dataset.
ABLATION_OUT    ?= results
ABLATION_MODELS ?=
SEEDS           ?=
ABLATION_TRAIN_ARGS = $(strip $(call opt,--device,$(DEVICE)) $(call opt,--amp,$(AMP)) \
	$(call opt,--compile,$(COMPILE)) $(call opt,--channels-last,$(CHANNELS_LAST)) $(call opt,--jit,$(JIT)) \
	$(call opt,--threads,$(THREADS)))

ablation: $(STAMP) ## plain vs residual, both frameworks: make ablation ABLATION=cifar10|cifar100|cats_vs_dogs EPOCHS=N [SEEDS=3] [FRAMEWORKS=torch]
	$(PY) -m shared.ablation --ablation $(ABLATION) --frameworks $(FRAMEWORKS) --data-dir $(DATA_DIR) \
		--out $(ABLATION_OUT) $(if $(filter command line,$(origin DATASET)),--dataset $(DATASET)) \
		$(call opt,--models,$(ABLATION_MODELS)) $(call opt,--shortcut,$(SHORTCUT)) \
		$(call opt,--epochs,$(EPOCHS)) $(call opt,--iters,$(ITERS)) $(call opt,--batch-size,$(BATCH_SIZE)) \
		$(call opt,--lr,$(LR)) $(call opt,--seed,$(SEED)) $(call opt,--seeds,$(SEEDS)) \
		$(if $(ABLATION_TRAIN_ARGS),--train-args="$(ABLATION_TRAIN_ARGS)")

# Data (datasets/): prepare once into data/prepared/<name>/ (uint8 arrays + checksummed manifest).
# VAL_SIZE: validation images carved from the training set (count, or fraction < 1); NO_DOWNLOAD=1 stays offline.
# DATASET=digits reads scikit-learn's handwritten digits from its wheel: never a download.
# LABELS=coarse: CIFAR-100's 20 superclasses, prepared (and trained) as the dataset cifar100_coarse.
VAL_SIZE    ?=
NO_DOWNLOAD ?=

data: $(STAMP) ## prepare a dataset once: make data DATASET=cifar10|cifar100|cats_vs_dogs|digits|synthetic[_cifar] [LABELS=fine|coarse] [NO_DOWNLOAD=1]
	$(PY) -m datasets.prepare --dataset $(DATASET) $(call opt,--labels,$(LABELS)) --data-dir $(DATA_DIR) \
		$(call opt,--val-size,$(VAL_SIZE)) $(if $(NO_DOWNLOAD),--no-download)

bench-data: $(STAMP) ## images/s of each framework's input pipeline (CIFAR-10-shaped batches of 128): results/bench/data.*
	$(PY) -m datasets.bench --data-dir $(DATA_DIR) $(call opt,--batch-size,$(BATCH_SIZE))

# Speed benchmark (shared/bench/): training/inference images/s, batch-1 latency and GFLOP/s per framework, Keras
# backend and fast path, each in its own process, ONNX Runtime on both exports, and the real training loops
# beside their steps -> $(BENCH_OUT)/bench-<model>-<device>.md/.json.
# FRAMEWORKS=torch,keras-tensorflow,keras-jax,keras-torch,onnxruntime picks labels (each with its training loop's
# step); BENCH_VARIANTS e.g. torch:compile,keras-jax adds fast paths. BENCH_ITERS batches per timed block (more
# until a block lasts BENCH_MIN_TIME s, default 1), REPEATS timed blocks (median, min-max), LOOP_EPOCHS per loop.
BENCH_ITERS    ?=
BENCH_MIN_TIME ?=
REPEATS        ?=
BENCH_VARIANTS ?=
LOOP_EPOCHS    ?=
BENCH_OUT      ?= results/bench
# FRAMEWORKS has the ablation's default; the bench takes it only when it is given.
BENCH_FRAMEWORKS = $(if $(filter command line environment,$(origin FRAMEWORKS)),$(FRAMEWORKS))

bench: $(STAMP) ## speed per framework, Keras backend and fast path: make bench [FRAMEWORKS=torch,keras-jax] [DEVICE=cpu|cuda]
	$(PY) -m shared.bench --model $(MODEL) --out $(BENCH_OUT) --data-dir $(DATA_DIR) \
		$(call opt,--batch-size,$(BATCH_SIZE)) $(call opt,--device,$(DEVICE)) $(call opt,--iters,$(BENCH_ITERS)) \
		$(call opt,--repeats,$(REPEATS)) $(call opt,--min-time,$(BENCH_MIN_TIME)) \
		$(call opt,--variants,$(BENCH_VARIANTS)) $(call opt,--frameworks,$(BENCH_FRAMEWORKS)) \
		$(call opt,--loop-epochs,$(LOOP_EPOCHS))

# On a GPU machine (docs/gpu.md): gpu-report measures every training path in order of value until BUDGET seconds
# are spent (default 360) -> $(OUT)/gpu-<device>.md/.json; gpu-full-run times ResNet-20's whole CIFAR recipe on the
# CIFAR-size synthetic set, or a fixed fraction of it (FRACTION= the first, default 1/64) and the projected total,
# within BUDGET (default 270) -> $(OUT)/full-run-<device>.md/.json. OUT defaults to results/bench here; GPU_ARGS
# passes further flags (python -m shared.bench.gpu --help, python -m shared.bench.full_run --help).
BUDGET   ?=
FRACTION ?=
GPU_ARGS ?=
GPU_OUT = $(or $(OUT),results/bench)

gpu-report: $(STAMP) ## every training path within BUDGET s: make gpu-report [BUDGET=360] [OUT=results/bench] [DEVICE=cpu]
	$(PY) -m shared.bench.gpu --out $(GPU_OUT) --data-dir $(DATA_DIR) $(call opt,--budget,$(BUDGET)) \
		$(call opt,--device,$(DEVICE)) $(GPU_ARGS)

gpu-full-run: $(STAMP) ## ResNet-20's full recipe, timed or projected: make gpu-full-run [BUDGET=270] [FRACTION=1/64]
	$(PY) -m shared.bench.full_run --out $(GPU_OUT) --data-dir $(DATA_DIR) $(call opt,--budget,$(BUDGET)) \
		$(call opt,--device,$(DEVICE)) $(call opt,--first-fraction,$(FRACTION)) $(call given,--model,MODEL) \
		$(call opt,--batch-size,$(BATCH_SIZE)) $(GPU_ARGS)

# Mutant suite (tests/mutants.py): each curated mutant breaks one cross-framework convention in a copy
# of the tree and must make its named test fail -> results/mutants.md/.json. MUTANTS=name,... runs a subset.
MUTANTS ?=

test-mutants: $(STAMP) ## slow: every curated mutant must be killed by its test: results/mutants.md [MUTANTS=a,b]
	$(PY) -m tests.mutants $(call opt,--only,$(MUTANTS))
