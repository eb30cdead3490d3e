#!/usr/bin/env bash
# A persona's handshake on a GPU host: the prompt stepped in the batched ticks against its kept
# state copied in, with no slot talking and with all the others talking, at the full-size model's
# shapes (random weights: the 7B LM and the full Mimi), 64 slots. Target on an H100/H200: handshake
# p99 at most 200 ms from the kept state, the talking slots' tick unchanged beside a prompt.
# Run it after bench/device_check.sh, which installs moshi and sphn there. Under 5 minutes.
#   bench/device_persona.sh [SLOTS] [TRIALS]      (defaults: 64 20); the table on stdout and in $OUT
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-reports/device}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} MYCA_MOSHI_DEVICE=${MYCA_MOSHI_DEVICE:-cuda}
${PYTHON:-python3} bench/persona_prefill.py --shapes "${SHAPES:-full}" --slots "${1:-64}" --trials "${2:-20}" \
  2>&1 | tee "$out/persona_prefill.txt"
