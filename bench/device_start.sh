#!/usr/bin/env bash
# A restart, cold and warm, in one run: the batched server with the full-size model's shapes
# (random weights, 7B LM and full Mimi) started twice on the same compile caches (empty, then as
# the first start left them), the time from the launcher's start to its first handshake each
# time, what /healthz says of the cache, and the GPU's health from /metrics (NVML) while loaded.
# Target on an H100/H200: the warm start at most 20 s. Run it after bench/device_check.sh (moshi
# and sphn installed). Under 8 minutes.
#   bench/device_start.sh [SLOTS]     (default 32); results under $OUT (or reports/device)
#   SHAPES=small bench/device_start.sh 2   a smoke run on CPU (the tiny LM; its mode compiles nothing)
set -uo pipefail
cd "$(dirname "$0")/.."
slots=${1:-32}
out=${OUT:-reports/device}
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
work=$(mktemp -d)
server=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"' EXIT
"$python" -m myca_ops.lab.weights "$work/weights" || exit 1  # the tokenizer's folder; the LM is random
export MYCA_MOSHI_RANDOM_WEIGHTS=${SHAPES:-full} MYCA_MOSHI_WEIGHTS_DIR=$work/weights MYCA_MOSHI_SLOTS=$slots \
  MYCA_MOSHI_PORT=8998 TORCHINDUCTOR_CACHE_DIR=$work/cache/inductor TRITON_CACHE_DIR=$work/cache/triton
for start in first second; do
  echo "device_start: $start start, $slots slots ($(date -u +%T))"
  t0=$(date +%s.%N)
  "$python" -m myca_ops.voice.launcher serve --auto >"$out/start_$start.log" 2>&1 &
  server=$!
  "$python" -m myca_ops.voice.launcher wait --timeout 420 || { tail -20 "$out/start_$start.log"; exit 1; }
  t1=$(date +%s.%N)
  curl -s localhost:8998/healthz >"$out/start_$start.json"
  curl -s localhost:8998/metrics | grep -E '^myca_(gpu|moshi_start)' >"$out/start_${start}_metrics.txt"
  echo "$t0 $t1" >"$out/start_${start}_times.txt"
  kill $server
  wait $server 2>/dev/null
  server=
done
"$python" - "$out" <<'PY'
import json, sys
out = sys.argv[1]
print(f"{'start':<7} {'compile cache':<14} {'to handshake':>12} {'loaded (server)':>15}  why")
rows = {}
for start in ("first", "second"):
    health = json.load(open(f"{out}/start_{start}.json"))
    t0, t1 = map(float, open(f"{out}/start_{start}_times.txt").read().split())
    cache = health["compile_cache"]
    rows[start] = t1 - t0
    print(f"{start:<7} {cache['state']:<14} {t1 - t0:>10.1f} s {health['start_s']:>13.1f} s  {cache['why']}")
print(f"warm/cold: {rows['second'] / rows['first']:.2f}")
PY
cat "$out/start_second_metrics.txt"
echo "device_start: done ($(date -u +%T))"
