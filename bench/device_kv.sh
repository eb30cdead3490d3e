#!/usr/bin/env bash
# A 24 GB card, on a larger GPU: bench/kv_cache.py under a 24 GiB budget (per attention-cache
# setting, the slots the service counts and the tick p99 at them; then agreement with moshi's own
# cache over 500 frames on random full-size weights), then, per setting, the served engine end to
# end with that many callers (bench/device_serve.sh, the budget and the setting in its environment).
# Target: at least 8 real-time conversations in 24 GiB, gap p99 at most 120 ms.
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
echo "device_kv: done ($(date -u +%T))"
