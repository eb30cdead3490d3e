#!/usr/bin/env bash
# Callers served end to end on a GPU host: one start of the batched server with the full-size
# model's shapes (random weights, the 7B LM and the full Mimi, as bench/moshi_slots.py uses;
# MYCA_MOSHI_RANDOM_WEIGHTS=full), 64 slots, then load tests of 16, 32 and 64 real websocket
# callers (Opus both ways, one process per caller; the callers count what they hear from the Ogg
# granules, --timing-only, and say when they lag themselves). Per load: callers real-time, callers
# that lagged, first audio p50/max, gap p99 (worst caller), the server's tick p99 over the load
# (its /healthz) and its CPU per caller (with its Opus workers). Target on an H100/H200: 64 callers all real-time, gap p99 at most 120 ms.
# Run it after bench/device_check.sh, which installs moshi and sphn there. Under 10 minutes.
#   bench/device_serve.sh [SLOTS] [LOADS]      (defaults: 64 "16 32 64"); results under $OUT (or reports/device)
#   SHAPES=small bench/device_serve.sh 2 "1 2"  a smoke run on CPU (the tiny LM)
set -uo pipefail
cd "$(dirname "$0")/.."
slots=${1:-64}
loads=${2:-16 32 64}
out=${OUT:-reports/device}
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}
work=$(mktemp -d)
server_cpu() { "$python" -c "from server_cpu import usage; print(usage($server)['total'])"; }  # with its Opus workers
server=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"' EXIT
"$python" -m myca_ops.lab.weights "$work/weights" || exit 1  # the tokenizer's folder; the LM is random
echo "device_serve: $slots slots, ${SHAPES:-full}-size shapes, random weights ($(date -u +%T))"
MYCA_MOSHI_RANDOM_WEIGHTS=${SHAPES:-full} MYCA_MOSHI_WEIGHTS_DIR=$work/weights MYCA_MOSHI_SLOTS=$slots MYCA_MOSHI_PORT=8998 \
  "$python" -m myca_ops.voice.launcher serve --auto >"$out/serve.log" 2>&1 &
server=$!
"$python" -m myca_ops.voice.launcher wait --timeout 300 || { tail -20 "$out/serve.log"; exit 1; }
for n in $loads; do
  echo "device_serve: $n callers ($(date -u +%T))"
  cpu0=$(server_cpu)
  t0=$(date +%s.%N)
  "$python" -m myca_ops.voice.loadtest --callers "$n" --seconds 10 --stagger 0.05 --timing-only >"$out/load_$n.json"
  t1=$(date +%s.%N)
  cpu1=$(server_cpu)
  curl -s localhost:8998/healthz >"$out/health_$n.json"
  "$python" - "$out/load_$n.json" "$out/health_$n.json" "$n" "$cpu0" "$cpu1" "$t0" "$t1" <<'PY'
import json, sys
from myca_ops.voice.stats import percentile
load, health = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
n, cpu0, cpu1, t0, t1 = int(sys.argv[3]), *map(float, sys.argv[4:8])
callers = load["callers"]
first = [c["first_audio_ms"] for c in callers if c.get("first_audio_ms") is not None]
gaps = [(c.get("gap_ms") or {}).get("p99") for c in callers]
gaps = [g for g in gaps if g is not None]
cpu_per_caller = (cpu1 - cpu0) / (t1 - t0) / n * 100
print(f"{'callers':>7} {'real-time':>9} {'lagged':>6} {'1st audio p50':>13} {'max':>6} {'gap p99':>8} {'tick p99':>8} {'CPU/caller':>10}")
print(f"{n:>7} {load['summary']['real-time']:>9} {load['summary']['caller lagged']:>6} "
      f"{percentile(first, 50) or 0:>10.0f} ms {max(first, default=0):>6.0f} "
      f"{max(gaps, default=0):>5.0f} ms {health['tick_ms']['p99'] or 0:>5.1f} ms {cpu_per_caller:>9.1f}%")
print(load["cause"])
PY
done
grep -E "myca-moshi|slots|ready|Error|error" "$out/serve.log" | head -8
kill $server
wait $server 2>/dev/null
server=
echo "device_serve: done ($(date -u +%T))"
