#!/usr/bin/env bash
# The full-size GPU tables in one command (at most 9 minutes): bench/moshi_step.py's
# three modes and bench/moshi_slots.py, random weights with the 7B shapes in bf16. For a GPU host
# with torch and Triton that can fetch nothing: what it lacks (moshi, sphn) is installed with
# --no-index from a folder made beforehand by bench/device_wheels.sh.
#   bench/device_check.sh [WHEELS_DIR]   (default .lab/device-wheels); tables under $OUT (or reports/device)
# The steps run cheapest first, each under its own time limit, each with its own JSON: a slow
# torch.compile costs its own rows, never the ones before it.
set -uo pipefail
cd "$(dirname "$0")/.."
wheels=${1:-.lab/device-wheels}
out=${OUT:-reports/device}
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv | tee "$out/gpu.txt"
"$python" -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)' | tee -a "$out/gpu.txt"
if ! "$python" -c 'import moshi, sphn' 2>/dev/null; then
  echo "device_check: installing moshi and sphn from $wheels (no index)"
  # moshi without its deps: its torch<2.10 pin must not replace the host's torch. The rest
  # unpinned, so that what the host already has stays.
  "$python" -m pip install --quiet --no-index --find-links "$wheels" --no-deps moshi==0.2.13 || exit 1
  "$python" -m pip install --quiet --no-index --find-links "$wheels" einops safetensors sentencepiece \
    huggingface-hub "sphn<0.3" || exit 1
fi
failed=0
step() {  # step NAME SECONDS COMMAND...: one table, kept whatever the later steps do
  local name=$1 seconds=$2
  shift 2
  echo "device_check: $name ($(date -u +%T), at most ${seconds}s)"
  timeout "$seconds" "$@" || { failed=1; echo "device_check: $name failed or ran out of time"; }
}
step step_eager_graphs 120 "$python" bench/moshi_step.py --device cuda --frames 100 --modes eager,graphs \
  --timeout 55 --json "$out/step_eager_graphs.json"
step slots_graphs 150 "$python" bench/moshi_slots.py --device cuda --ticks 60 --modes graphs \
  --timeout 145 --json "$out/slots_graphs.json"
step step_compile 140 "$python" bench/moshi_step.py --device cuda --frames 100 --modes compile+graphs \
  --timeout 135 --json "$out/step_compile.json"
step slots_compile 130 "$python" bench/moshi_slots.py --device cuda --ticks 60 --modes compile+graphs \
  --batches 1,4,16 --timeout 125 --json "$out/slots_compile.json"
echo "device_check: done ($(date -u +%T)); tables in $out"
exit $failed
