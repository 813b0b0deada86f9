# Thin entry points; the logic lives in scripts/. Pass UPSTREAM_VERSION=X to work on
# another pinned release than the base (see upstream/releases.json).
PYTHON ?= python3
UPSTREAM_VERSION ?=
UP := $(if $(UPSTREAM_VERSION),--upstream $(UPSTREAM_VERSION))
# pytest options and test ids, passed verbatim after `--` (shell quoting is kept):
#   make test PYTEST_ARGS="-x -k 'write_through and not Randomized'"
PYTEST_ARGS ?=
# REQUIRE_CUDA=1 (GPU runners): a test skipped for lack of CUDA fails the run
REQUIRE_CUDA ?=
PYTEST = $(if $(REQUIRE_CUDA),--require-cuda) -- $(PYTEST_ARGS)
# SGLANG_SERIES_DRY_RUN=1: every verb stops once its arguments are parsed (tests/tooling)
DRY = $(if $(SGLANG_SERIES_DRY_RUN),@echo dry run:)
WRITE ?=
STRICT ?=
FORCE ?=
CONTINUE ?=
COPY_TO ?=
RELEASES ?=
PUBLISH ?=
LINE ?=

.PHONY: apply test test-vanilla test-manual lint lint-ci prove discard clean lock lock-tools bench rebase pin queue export matrix lines

apply:  ## fetch the pinned sglang, apply patches/series, build the patched wheel, prepare the venv
	$(PYTHON) -m scripts.apply $(UP)

test: lint lint-ci  ## lint, then the registered and tooling tests against the patched build
	$(PYTHON) -m scripts.test --flavor patched $(UP) $(PYTEST)

test-vanilla:  ## the registered tests against vanilla upstream (the patches' tests fail here)
	$(PYTHON) -m scripts.test --flavor vanilla $(UP) $(PYTEST)

test-manual:  ## end-to-end tests that need a model and GPUs (see tests/manual)
	$(PYTHON) -m scripts.test --flavor patched --tier manual $(UP) $(PYTEST)

lint:  ## series/tests consistency checks
	$(PYTHON) -m scripts.lint

lint-ci:  ## lint the GitHub Actions workflows in ci/ with zizmor (offline)
	$(PYTHON) -m scripts.lint_ci

prove:  ## each patch's tests: fail on vanilla, pass patched (a table)
	$(PYTHON) -m scripts.prove $(UP) -- $(PYTEST_ARGS)

discard:  ## drop local edits and commits in the scratch tree (back to the baseline)
	$(PYTHON) -m scripts.discard $(UP)

lock:  ## regenerate env/<version>.lock from env/<version>.in (hashes, upload-date cut-off)
	$(PYTHON) -m scripts.lock $(UP)

lock-tools:  ## regenerate env/tools.lock (uv, wheel)
	$(PYTHON) -m scripts.lock --tools

bench:  ## the benchmarks in bench/, vanilla vs patched
	$(PYTHON) -m scripts.bench $(UP)

pin:  ## pin sglang X (default: the newest on PyPI): wheel sha256, cut-off date, env/X.in + env/X.lock
	$(PYTHON) -m scripts.pin $(UP)

rebase:  ## report how the series fares on UPSTREAM_VERSION=X (WRITE=1: adopt the proposed series, X becomes the base; WRITE=1 LINE=1: write X's line only; STRICT=1: fail if a kept patch no longer applies or a guard fails; COPY_TO=docs/rebase: keep the report there)
	$(PYTHON) -m scripts.rebase $(UP) $(if $(WRITE),--write) $(if $(LINE),--line) $(if $(STRICT),--strict) $(if $(COPY_TO),--copy-to $(COPY_TO))

queue:  ## the series as branch `queue` of the scratch tree, one commit per patch (FORCE=1: rebuild over unexported edits; CONTINUE=1: go on after a resolved conflict)
	$(PYTHON) -m scripts.queue $(UP) $(if $(FORCE),--force) $(if $(CONTINUE),--continue)

export:  ## write branch `queue` back to the series it came from (deterministic; on a release without a line: the move, LINE=1: its line only)
	$(PYTHON) -m scripts.export $(UP) $(if $(LINE),--line)

lines:  ## which patches each pinned release gets (PUBLISH=1: also the README's title and table)
	$(PYTHON) -m scripts.lines $(if $(PUBLISH),--publish)

matrix:  ## every fix's tests on each pinned vanilla release: present / fixed / cannot-run (RELEASES=a,b; PUBLISH=1 writes docs/matrix.md and the README table)
	$(PYTHON) -m scripts.matrix $(if $(RELEASES),--releases $(RELEASES)) $(if $(PUBLISH),--publish) -- $(PYTEST_ARGS)

clean:  ## remove the scratch trees (build/); the shared cache stays
	$(DRY) rm -rf build
