#!/usr/bin/env bash
# The service path on a GPU host: `myca-moshi serve --auto` (the batched server, slots sized from
# the GPU's free memory), then the upstream moshi.server, each on the lab checkpoint (tiny LM, full
# Mimi; generated here, no hub), each answering a crowd of real websocket callers (Opus both ways).
# Figures show that the path works with CUDA graphs on the GPU; the LM's speed is bench/moshi_*.py's.
# Run it after bench/device_check.sh, which installs moshi and sphn there.
#   bench/device_serve.sh [CALLERS]     (default 8); results under $OUT (or reports/device)
set -uo pipefail
cd "$(dirname "$0")/.."
callers=${1:-8}
out=${OUT:-reports/device}
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
work=$(mktemp -d)
server=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"' EXIT
"$python" -m myca_ops.lab.weights "$work/weights" || exit 1
echo "device_serve: myca-moshi probe"
"$python" -m myca_ops.voice.launcher probe
failed=0
for kind in batched upstream; do
  echo "device_serve: $kind server ($(date -u +%T))"
  MYCA_MOSHI_SERVER=$kind MYCA_MOSHI_WEIGHTS_DIR=$work/weights MYCA_MOSHI_SLOTS=0 MYCA_MOSHI_PORT=8998 \
    "$python" -m myca_ops.voice.launcher serve --auto >"$out/serve_$kind.log" 2>&1 &
  server=$!
  if "$python" -m myca_ops.voice.launcher wait --timeout 240; then
    n=$callers
    [ "$kind" = upstream ] && n=1  # moshi.server takes one conversation at a time
    # One probe process per caller: one process decoding many Opus streams falls behind itself.
    probes=()
    for i in $(seq "$n"); do
      "$python" -m myca_ops.voice.probe --seconds 6 >"$work/caller_$i.json" &
      probes+=($!)
      sleep 0.05
    done
    for pid in "${probes[@]}"; do wait "$pid" || failed=1; done
    "$python" - "$out/callers_$kind.json" "$work"/caller_*.json <<'PY'
import json, sys
callers = [json.load(open(path)) for path in sys.argv[2:]]
json.dump(callers, open(sys.argv[1], "w"), indent=2)
print(f"{'caller':>6} {'first audio ms':>14} {'gap p99 ms':>10} {'underruns':>9} {'rt ratio':>8}  verdict")
for i, c in enumerate(callers):
    gap = (c.get("gap_ms") or {}).get("p99")
    print(f"{i:>6} {c.get('first_audio_ms')!s:>14} {gap!s:>10} {c.get('underruns')!s:>9} "
          f"{c.get('realtime_ratio')!s:>8}  {c['cause']}")
print(f"{sum(c['realtime'] for c in callers)} of {len(callers)} callers real-time")
PY
    rm -f "$work"/caller_*.json
    curl -s localhost:8998/healthz && echo
  else
    failed=1
  fi
  grep -E "myca-moshi|slots|mode|Error|error" "$out/serve_$kind.log" | head -8
  kill $server
  wait $server 2>/dev/null
done
echo "device_serve: done ($(date -u +%T))"
exit $failed
