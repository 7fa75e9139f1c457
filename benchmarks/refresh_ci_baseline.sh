#!/usr/bin/env bash
# Re-measure the CI smoke baseline (run on a quiet machine of the CI kind, then commit the records).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf benchmarks/baselines/ci-smoke
tmp=$(mktemp -d)
.venv/bin/rooflens run experiments/ci-smoke.yaml --results "$tmp" --quiet
mkdir -p benchmarks/baselines/ci-smoke
cp "$tmp"/ci-smoke/*/*.json benchmarks/baselines/ci-smoke/
rm -rf "$tmp"
ls benchmarks/baselines/ci-smoke
