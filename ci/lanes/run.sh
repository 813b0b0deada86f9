#!/usr/bin/env bash
# The steps of every CI lane, in one place: ci/cpu.yml, ci/gpu.yml and this repository's
# own .ci/run all run this script, so a step that fails on a runner fails .ci/run first.
#
#   cpu     make apply; make test (CUDA tests skip, with their reason); make prove; then the
#           line of one other release a day, in turn: make apply, make prove with UPSTREAM_VERSION;
#           each proven wheel goes into build/wheelhouse (make wheelhouse), which ci/cpu.yml keeps
#   gpu     the same with REQUIRE_CUDA=1: a test skipped for lack of CUDA fails the lane; and
#           every other release's line: make apply, make test, make prove
#   manual  make apply; make test-manual (tests/manual: a DSV4 model on GPUs), REQUIRE_CUDA=1
#
# Every command exits non-zero on failure (pytest collecting no tests included), and
# `set -e` stops the lane at the first one that does.
set -euo pipefail
cd "$(dirname "$0")/../.."

lane="${1:-}"
case "$lane" in
  cpu | gpu | manual) ;;
  *) echo "usage: ci/lanes/run.sh cpu|gpu|manual" >&2; exit 2 ;;
esac

# pytest's summary (-ra, the default) lists every failure and every skip with its reason.
make apply
case "$lane" in
  cpu)    make test ;;
  gpu)    make test REQUIRE_CUDA=1 ;;
  manual) make test-manual REQUIRE_CUDA=1 ;;
esac
if [ "$lane" != manual ]; then
  make prove
fi
# The cpu lane keeps each wheel it proved (the base's here, today's line's below) in build/wheelhouse.
if [ "$lane" = cpu ]; then
  base="$(SGLANG_SERIES_DRY_RUN= "${PYTHON:-python3}" -m scripts.lines --base)"
  make wheelhouse UPSTREAM_VERSION="$base"
fi
# The other releases' lines (patches/lines/X.series): every one on the gpu lane, one a day on the cpu lane.
# (Which lines there are is read for real even in a dry run: it only reads patches/.)
case "$lane" in
  cpu) others="$(SGLANG_SERIES_DRY_RUN= "${PYTHON:-python3}" -m scripts.lines --today)" ;;
  gpu) others="$(SGLANG_SERIES_DRY_RUN= "${PYTHON:-python3}" -m scripts.lines --others)" ;;
  *)   others="" ;;
esac
for version in $others; do
  make apply UPSTREAM_VERSION="$version"
  if [ "$lane" = gpu ]; then make test REQUIRE_CUDA=1 UPSTREAM_VERSION="$version"; fi
  make prove UPSTREAM_VERSION="$version"
  if [ "$lane" = cpu ]; then make wheelhouse UPSTREAM_VERSION="$version"; fi
done
