#!/usr/bin/env bash
# The test suite's wall time at two commits, back to back on this machine, each in a fresh
# clone with its own .venv (as CI runs it): `make test`'s pytest command, timed.
#
#   bench/suite_time.sh BASE [HEAD]     # commits; HEAD defaults to HEAD
#
# Each clone's venv is built first (`make setup`, not timed), then both suites run one after the
# other with nothing else started meanwhile; the load of other jobs on a shared machine still
# moves the figures by tens of seconds, so compare numbers from one run of this script only.
# A clone has no ../shared/data beside it, so the tests that need it skip in both.
set -eu
base=${1:?usage: bench/suite_time.sh BASE [HEAD]}
head=${2:-HEAD}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/hpsearch-suite-XXXXXX)
echo "suite time: base $(git -C "$repo" rev-parse --short "$base"), head" \
     "$(git -C "$repo" rev-parse --short "$head"), $(nproc) cores, work folder $work"
for side in base head; do
  commit=${!side}
  git clone -q "$repo" "$work/$side"
  git -C "$work/$side" checkout -q "$commit"
  make -C "$work/$side" setup > "$work/$side-setup.log" 2>&1
done
for side in base head; do
  cd "$work/$side"
  start=$(date +%s.%N)
  status=0
  .venv/bin/python -m pytest -q -n auto --dist loadfile -p no:cacheprovider \
    > "$work/$side-pytest.txt" 2>&1 || status=$?
  end=$(date +%s.%N)
  printf '%-5s %s  pytest %6.1f s  exit %d  %s\n' "$side" "$(git rev-parse --short HEAD)" \
    "$(echo "$end - $start" | bc)" "$status" "$(tail -1 "$work/$side-pytest.txt")"
done
