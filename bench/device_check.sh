#!/usr/bin/env bash
# The full-size GPU tables in one command (about 8 minutes on an H100): bench/moshi_step.py's
# three modes and bench/moshi_slots.py, random weights with the 7B shapes in bf16. For a GPU host
# with torch and Triton that can fetch nothing: the wheels it lacks come from a folder made
# beforehand by bench/device_wheels.sh.
#   bench/device_check.sh [WHEELS_DIR]   (default .lab/device-wheels); tables under $OUT (or reports/device)
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=${1:-.lab/device-wheels}
out=${OUT:-reports/device}
mkdir -p "$out"
python=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv | tee "$out/gpu.txt"
"$python" -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)' | tee -a "$out/gpu.txt"
if ! "$python" -c 'import moshi, sphn' 2>/dev/null; then
  echo "device_check: installing moshi and its needs from $wheels (no index)"
  # moshi without its deps: its torch<2.10 pin must not replace the host's torch.
  "$python" -m pip install --quiet --no-index --find-links "$wheels" --no-deps moshi==0.2.13
  "$python" -m pip install --quiet --no-index --find-links "$wheels" einops safetensors sentencepiece \
    "huggingface-hub<1.0" "sphn<0.3"
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
echo "device_check: step latency, three modes ($(date -u +%T))"
timeout 270 "$python" bench/moshi_step.py --device cuda --frames 100 --json "$out/moshi_step.json" | tee "$out/moshi_step.txt"
echo "device_check: slots, B = 1..16, graphs and compile+graphs ($(date -u +%T))"
timeout 330 "$python" bench/moshi_slots.py --device cuda --ticks 60 --json "$out/moshi_slots.json" | tee "$out/moshi_slots.txt"
echo "device_check: done ($(date -u +%T)); tables in $out"
