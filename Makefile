# Thin entry points; the logic lives in scripts/. Pass UPSTREAM_VERSION=X to work on
# another pinned release than the base (see upstream/releases.json).
#
# Every variable below reaches the verbs through the environment, read by scripts/cli.py:
# no value is ever expanded into a shell command line. A misspelt variable
# (UPSTREAM_VERISON=...) is an error that names the right one.
PYTHON ?= python3
UPSTREAM_VERSION ?=
# pytest options and test ids, split as a shell would (quotes kept, nothing run):
#   make test PYTEST_ARGS="-x -k 'write_through and not Randomized'"
PYTEST_ARGS ?=
# REQUIRE_CUDA=1 (GPU runners): a test skipped for lack of CUDA fails the run
REQUIRE_CUDA ?=
WRITE ?=
STRICT ?=
FORCE ?=
CONTINUE ?=
COPY_TO ?=
RELEASES ?=
PUBLISH ?=
LINE ?=
# FROM=Y (rebase): the line a move starts from (default: the newest line below UPSTREAM_VERSION)
FROM ?=
# FIXES=#a,#b (matrix): judge only these fixes; PUBLISH=1 keeps the other fixes' published rows
FIXES ?=
# FRESH=1 (prove, rebase, matrix): run every side's tests again instead of reusing the
# stored outcomes of the very same installed files, venv and tests
FRESH ?=
# WHEELHOUSE=dir (wheelhouse): the folder the wheels go into (default build/wheelhouse)
WHEELHOUSE ?=
# PART=file (matrix): write these releases' outcomes there only, one CI job's part of the
# matrix; MERGE=dir (matrix): the matrix from the parts in dir, no test run
PART ?=
MERGE ?=
export PYTHON UPSTREAM_VERSION PYTEST_ARGS REQUIRE_CUDA WRITE STRICT FORCE CONTINUE COPY_TO RELEASES PUBLISH LINE FRESH FROM FIXES WHEELHOUSE PART MERGE
# SGLANG_SERIES_DRY_RUN=1: every verb stops once its arguments are parsed (tests/tooling)
# exec: the verb is make's own child, so the SIGTERM make passes on reaches it (not a shell)
CLI = @exec "$$PYTHON" -m scripts.cli

.PHONY: apply test test-vanilla test-manual lint lint-ci prove discard clean lock lock-tools bench rebase pin queue export matrix lines wheelhouse

apply:  ## fetch the pinned sglang, apply its line (patches/lines/X.series), build the patched wheel, prepare the venv
	$(CLI) apply

test: lint lint-ci  ## lint, then the registered and tooling tests against the patched build
	$(CLI) test

test-vanilla:  ## the registered tests against vanilla upstream (the patches' tests fail here)
	$(CLI) test-vanilla

test-manual:  ## end-to-end tests that need a model and GPUs (see tests/manual)
	$(CLI) test-manual

lint:  ## series/tests consistency checks
	$(CLI) lint

lint-ci:  ## lint the GitHub Actions workflows in ci/ with zizmor (offline)
	$(CLI) lint-ci

prove:  ## each patch's tests: fail on vanilla, pass patched (a table; FRESH=1: rerun sides stored as unchanged)
	$(CLI) prove

discard:  ## drop local edits and commits in the scratch tree (back to the baseline)
	$(CLI) discard

lock:  ## regenerate env/<version>.lock from env/<version>.in (hashes, upload-date cut-off)
	$(CLI) lock

lock-tools:  ## regenerate env/tools.lock (uv, wheel, filelock, pytest for the tooling tests)
	$(CLI) lock-tools

bench:  ## the benchmarks in bench/, vanilla vs patched
	$(CLI) bench

pin:  ## pin sglang X (default: the newest the configured package index has): wheel name + sha256, cut-off date, env/X.in + env/X.lock
	$(CLI) pin

rebase:  ## report how the newest line below UPSTREAM_VERSION=X (or FROM=Y) fares on X (WRITE=1: write X's line and make X the base; WRITE=1 LINE=1: write X's line only; STRICT=1: fail if a kept patch no longer applies or a guard fails; COPY_TO=docs/rebase: keep the report there)
	$(CLI) rebase

queue:  ## the series as branch `queue` of the scratch tree, one commit per patch (FORCE=1: rebuild over unexported edits; CONTINUE=1: go on after a resolved conflict)
	$(CLI) queue

export:  ## write branch `queue` back to the series it came from (deterministic; on a release without a line: the move, LINE=1: its line only)
	$(CLI) export

lines:  ## which patches each pinned release gets, and what the evidence asks of each line (WRITE=1: rewrite the lines from docs/matrix.json and the ports; PUBLISH=1: also the README's title and table)
	$(CLI) lines

matrix:  ## every fix's tests on each pinned vanilla release: present / fixed / cannot-run (RELEASES=a,b; PUBLISH=1 writes docs/matrix.md and the README table; PART=file: these releases' part only; MERGE=dir: the matrix from such parts)
	$(CLI) matrix

wheelhouse:  ## the patched wheel of every pinned release's line (or UPSTREAM_VERSION's) in one folder, a simple index with SHA256SUMS (WHEELHOUSE=dir, default build/wheelhouse)
	$(CLI) wheelhouse

clean:  ## remove the scratch trees (build/); the shared cache stays
	$(if $(SGLANG_SERIES_DRY_RUN),@echo dry run:) rm -rf build
