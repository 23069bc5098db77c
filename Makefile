# One entry point for people and CI. Every target builds its own virtualenv (.venv) from scratch if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: serve demo test lint typecheck unit setup setup-dev system-deps train bench soak gpu-check results lock audit clean

## serve: set up the light runtime and serve the bundled CCTV clip live (viewer URL printed)
serve: $(VENV)/.core
	$(BIN)/chromastream serve

## demo: set up the light runtime and colorize the bundled CCTV clip -> chromastream-demo.mp4
demo: $(VENV)/.core
	$(BIN)/chromastream colorize --demo chromastream-demo.mp4 --overwrite

## test: set up everything (training extras, dev tools, Triton) and run lint, type checks and the whole test suite
test: $(VENV)/.dev $(VENV)/.triton system-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -q -rs

## system-deps: Debian packages the integration tests use (GStreamer RTSP server, Chromium, Mosquitto); only what is missing
SYSTEM_PACKAGES := gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-rtsp gstreamer1.0-plugins-base \
	gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav \
	chromium chromium-driver mosquitto
system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

setup: $(VENV)/.core
setup-dev: $(VENV)/.dev

# Every install is held to the exact versions in constraints.txt (-c only caps versions, it adds nothing), so
# two setups a month apart get the same packages. `make lock` renews them (docs/DEPENDENCIES.md).
CONSTRAINTS := constraints.txt

$(VENV)/.core: pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip -c $(CONSTRAINTS)
	$(BIN)/pip install -q -e . -c $(CONSTRAINTS)
	touch $@

# torch: which build is a choice made here, not left to pip. A plain `pip install torch` on Linux takes
# PyPI's CUDA build (several GB of nvidia-* wheels, useless without a GPU), so the default asks PyTorch's CPU
# index for it. pip's own configuration still applies: where it already offers the CPU wheel (a local wheel
# folder, as on the development machines) that one is used, and the unreachable index only costs a warning.
# torch goes in first and alone (--no-deps: its small dependencies come from the normal index with the
# extras next, which then find the pin of the `train` extra already met). For a CUDA machine, see README:
#   make setup-dev TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# Triton (about 900 MB) belongs to the `gpu` extra only. The Triton kernel tests also run on the CPU through
# Triton's interpreter (TRITON_INTERPRET=1), so `make test` installs it on its own: a development setup that
# does not run the tests (setup-dev, train, bench) does not carry it.
TRITON ?= triton==3.8.0

$(VENV)/.dev: $(VENV)/.core
	$(BIN)/pip install -q --no-deps --index-url $(TORCH_INDEX) '$(TORCH)' -c $(CONSTRAINTS)
	$(BIN)/pip install -q -e '.[train,bench,dev,cluster]' -c $(CONSTRAINTS)
	touch $@

$(VENV)/.triton: $(VENV)/.dev
	$(BIN)/pip install -q '$(TRITON)' -c $(CONSTRAINTS)
	touch $@

## lock: renew constraints.txt: resolve every extra afresh in a throwaway venv (.venv-lock), pin what it installed
# torch's build label (+cpu, +cu128) is cut from its pin, so one file serves the CPU and the CUDA setups.
LOCK_VENV := .venv-lock
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q --upgrade pip
	$(LOCK_VENV)/bin/pip install -q --no-deps --index-url $(TORCH_INDEX) '$(TORCH)'
	$(LOCK_VENV)/bin/pip install -q -e '.[train,bench,dev,cluster]' '$(TRITON)'
	{ sed -n '/^#/p' $(CONSTRAINTS); \
	  $(LOCK_VENV)/bin/pip freeze --all --exclude-editable | grep -v -e '^#' -e '^-e ' -e '^chromastream==' \
	    | sed -E 's/^([^=]+==[^+]+)[+].*$$/\1/'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf $(LOCK_VENV)
	@echo "constraints.txt renewed: review 'git diff constraints.txt', then run make test"

## audit: check the pinned versions against known vulnerabilities (pip-audit, its own venv .venv-audit)
# pip-audit asks a vulnerability service (AUDIT_SERVICE: pypi or osv) about each pin in constraints.txt. Where
# that service cannot be reached, the audit says so in one line and passes with a warning; AUDIT_STRICT=1
# makes that a failure. Known vulnerabilities always fail.
AUDIT_VENV := .venv-audit
PIP_AUDIT ?= pip-audit==2.10.1
AUDIT_SERVICE ?= pypi
AUDIT_STRICT ?= 0
define AUDIT_SUMMARY
import json, os, sys
strict = os.environ.get("AUDIT_STRICT", "0") not in ("", "0")
service, report, log = sys.argv[1:4]
def unchecked(why):
    print(f"audit: WARNING: {why}; see {log}", file=sys.stderr)
    sys.exit(1 if strict else 0)
try:
    with open(report) as f:
        deps = json.load(f)["dependencies"]
except (OSError, ValueError, KeyError):
    unchecked(f"the vulnerability database ({service}) could not be reached: nothing was checked")
found = [d for d in deps if d.get("vulns")]
skipped = [d for d in deps if "skip_reason" in d]
for d in found:
    for v in d["vulns"]:
        fix = ", ".join(v.get("fix_versions") or []) or "none yet"
        print(f"audit: {d['name']} {d['version']}: {v['id']} (fixed in: {fix})")
if found:
    sys.exit(1)
if deps and len(skipped) == len(deps):
    unchecked(f"the vulnerability database ({service}) answered for none of the {len(deps)} pinned packages (offline, or a mirror without vulnerability data): nothing was checked")
if skipped:
    unchecked(f"{len(skipped)} of {len(deps)} pinned packages could not be checked ({', '.join(d['name'] for d in skipped)})")
print(f"audit: {len(deps)} pinned packages checked against {service}: no known vulnerabilities")
endef
export AUDIT_SUMMARY
audit:
	test -x $(AUDIT_VENV)/bin/pip-audit || { $(PYTHON) -m venv $(AUDIT_VENV) && $(AUDIT_VENV)/bin/pip install -q '$(PIP_AUDIT)'; }
	@rm -f $(AUDIT_VENV)/report.json
	@$(AUDIT_VENV)/bin/pip-audit --requirement $(CONSTRAINTS) --no-deps --disable-pip --progress-spinner off \
		--vulnerability-service $(AUDIT_SERVICE) --format json --output $(AUDIT_VENV)/report.json \
		> $(AUDIT_VENV)/audit.log 2>&1 || true
	@AUDIT_STRICT=$(AUDIT_STRICT) $(AUDIT_VENV)/bin/python -c "$$AUDIT_SUMMARY" $(AUDIT_SERVICE) \
		$(AUDIT_VENV)/report.json $(AUDIT_VENV)/audit.log

## train: stage 1 of the colorizer (resumable; run it again to continue)
train: $(VENV)/.dev
	$(BIN)/python -m chromastream.models.colorizer.train generator --run runs/generator

## bench: every benchmark (image quality, speed, video quality, hints, live latency, serve workers, throughput per backend, deepfake), then RESULTS.md
bench: $(VENV)/.dev
	$(BIN)/python -m benchmarks.quality
	$(BIN)/python -m benchmarks.model_speed
	$(BIN)/python -m benchmarks.video_speed
	$(BIN)/python -m benchmarks.video_quality
	$(BIN)/python -m benchmarks.hints_curve
	$(BIN)/python -m benchmarks.live_latency
	$(BIN)/python -m benchmarks.serve_throughput
	$(BIN)/python -m benchmarks.throughput
	$(BIN)/python -m benchmarks.precision --live-streams 1 2
	$(BIN)/python -m benchmarks.deepfake
	$(BIN)/python -m benchmarks.report

## soak: ten minutes of one live stream, latency and memory sampled every 30 s (live_soak.json), then RESULTS.md
soak: $(VENV)/.dev
	$(BIN)/python -m benchmarks.live_latency --soak-only --soak-minutes 10
	$(BIN)/python -m benchmarks.report

## gpu-check: on a CUDA machine whose $(PYTHON) has CUDA torch and triton: gpu tests, throughput, GPU profile, serve without/with MPS, RESULTS.md (under 10 min)
# Every step runs under its own time limit (seconds below, about 9 minutes together) whatever happened to the
# steps before it, so each benchmark that runs writes its JSON; at the end the steps that failed or ran out of
# time are named and the target fails. The benchmarks run short here (docs/GPU.md says what each measures):
# run them on their own, without these arguments, for the full tables.
GPU_CHECK_THROUGHPUT ?= --backends tensorrt torch-cuda --seconds 1 --streams 1 2 --clip-frames 30
GPU_CHECK_PROFILE ?= --compile-modes reduce-overhead
GPU_CHECK_SERVE ?= --modes model --workers 1 2 --streams 2 --warmup 2 --seconds 4
GPU_CHECK_LIMITS ?= tests=90 throughput=60 profile=120 serve=120 serve_mps=120 report=20
gpu-check:
	@$(PYTHON) -c "import sys, importlib.util as u; u.find_spec('torch') or sys.exit('gpu-check: $(PYTHON) has no torch (install a CUDA build)'); import torch; torch.cuda.is_available() or sys.exit('gpu-check: torch sees no CUDA device')"
	@failed=""; \
	step() { \
		name=$$1; shift; limit=$$(for kv in $(GPU_CHECK_LIMITS); do [ "$${kv%%=*}" = "$$name" ] && echo "$${kv#*=}"; done); \
		echo "== gpu-check: $$name (at most $${limit:-120} s): $$*"; \
		timeout -k 5 $${limit:-120} "$$@"; status=$$?; \
		if [ $$status -ne 0 ]; then \
			if [ $$status -eq 124 ]; then why="out of time"; else why="exit $$status"; fi; \
			echo "== gpu-check: $$name FAILED ($$why)"; failed="$$failed $$name"; \
		fi; \
	}; \
	step tests $(PYTHON) -m pytest -q -rs -m gpu; \
	step throughput $(PYTHON) -m benchmarks.throughput $(GPU_CHECK_THROUGHPUT); \
	step profile $(PYTHON) -m benchmarks.gpu_profile $(GPU_CHECK_PROFILE); \
	step serve $(PYTHON) -m benchmarks.serve_throughput $(GPU_CHECK_SERVE); \
	step serve_mps $(PYTHON) -m benchmarks.serve_throughput $(GPU_CHECK_SERVE) --mps; \
	step report $(PYTHON) -m benchmarks.report; \
	if [ -n "$$failed" ]; then echo "gpu-check: FAILED:$$failed"; exit 1; fi; \
	echo "gpu-check: every step passed"

results: $(VENV)/.dev
	$(BIN)/python -m benchmarks.report

clean:
	rm -rf $(VENV) $(LOCK_VENV) $(AUDIT_VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
