#!/usr/bin/env bash
# A 24 GB card, on a larger GPU: bench/kv_cache.py under a 24 GiB budget (per attention-cache
# setting, the slots the service counts and the tick p99 at them; then agreement with moshi's own
# cache over 500 frames on random full-size weights), then, per setting, the served engine end to
# end with that many callers (bench/device_serve.sh, the budget and the setting in its environment).
# Target: at least 8 real-time conversations in 24 GiB, gap p99 at most 120 ms. Last, 8-bit weights:
# the lab's checkpoint in Kyutai's q8 format served on the GPU to one caller (bitsandbytes from
# the wheels folder: bench/device_wheels.sh DEST 3.12 bitsandbytes==0.50.2).
# Run it after bench/device_check.sh (moshi and sphn installed). Under 10 minutes.
#   bench/device_kv.sh [BUDGET_GIB]                 (default 24); results under $OUT (or reports/device)
#   SHAPES=small DEVICE=cpu bench/device_kv.sh      a smoke run on CPU (the tiny LM, 2 slots)
set -uo pipefail
cd "$(dirname "$0")/.."
budget=${1:-24}
out=${OUT:-reports/device}
mkdir -p "$out"
python=${PYTHON:-python3}
device=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}
echo "device_kv: bench/kv_cache.py, a ${budget} GiB budget on $device ($(date -u +%T))"
if [ "$device" = cpu ]; then
  args=(--device cpu --shapes "${SHAPES:-full}" --slots 2 --ticks 10 --frames 40)
else
  args=(--device "$device" --shapes "${SHAPES:-full}" --budget-gib "$budget")
fi
"$python" bench/kv_cache.py "${args[@]}" | tee "$out/kv_cache.txt" || exit 1
tail -1 "$out/kv_cache.txt" >"$out/kv_cache.json"
# Per setting: its slots, served to as many callers (the budget applies on a GPU only).
"$python" -c 'import json, sys
for r in json.load(open(sys.argv[1]))["slots"]:
    print(r["kv_dtype"], r["context"], r["slots"])' "$out/kv_cache.json" | while read -r kv context slots; do
  echo "device_kv: served, $kv cache, context $context, $slots callers ($(date -u +%T))"
  MYCA_MOSHI_KV_DTYPE=$kv MYCA_MOSHI_CONTEXT_FRAMES=$context MYCA_MOSHI_MEMORY_BUDGET_GIB=$budget \
    OUT="$out/served-$kv-$context" bench/device_serve.sh "$slots" "$slots" | tee "$out/served-$kv-$context.txt"
done
wheels=${WHEELS:-.lab/device-wheels}
"$python" -c 'import bitsandbytes' 2>/dev/null ||
  "$python" -m pip install --quiet --no-index --find-links "$wheels" --no-deps bitsandbytes 2>/dev/null
if [ "$device" = cpu ]; then
  echo "device_kv: 8-bit weights are refused on CPU (tests/test_model.py shows the reason): left out"
elif "$python" -c 'import bitsandbytes' 2>/dev/null; then
  echo "device_kv: 8-bit weights (Kyutai's q8 format, the lab's checkpoint) served on $device ($(date -u +%T))"
  "$python" -m myca_ops.lab.weights "$out/weights-q8" --quantize >/dev/null || exit 1
  MYCA_MOSHI_WEIGHTS_DIR=$out/weights-q8 MYCA_MOSHI_DEVICE=$device MYCA_MOSHI_SLOTS=1 MYCA_MOSHI_PORT=8998 \
    "$python" -m myca_ops.voice.launcher serve --auto >"$out/serve-q8.log" 2>&1 &
  server=$!
  if "$python" -m myca_ops.voice.launcher wait --timeout 300; then
    "$python" -m myca_ops.voice.probe --seconds 5 | tail -1 | tee "$out/probe-q8.json"
  else
    tail -5 "$out/serve-q8.log"
  fi
  kill $server; wait $server 2>/dev/null
else
  echo "device_kv: no bitsandbytes here, the 8-bit step is left out"
fi
echo "device_kv: done ($(date -u +%T))"
