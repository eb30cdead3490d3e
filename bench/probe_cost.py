"""CPU cost of the voice probe itself on the control node, per audio frame.

Runs the probe in this process against a live Moshi (`--url`) and divides the CPU time
(user + system) this process spent while streaming (sending pages on time, receiving and
decoding the answer) by the frames it handled: 20 ms Opus frames sent and 80 ms model frames
of audio received.  One-time work (imports, encoding the test audio before the clock
starts, the TLS context) is shown apart.  Target: under 1 ms of CPU per frame.

    python bench/probe_cost.py --url ws://GPU_HOST:8998/api/chat --seconds 10
"""

from __future__ import annotations

import argparse
import sys
import time

from myca_ops.voice import probe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args(argv)
    probe.speech_like(1)  # import numpy and sphn before timing
    import sphn  # noqa: F401

    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = probe.run(args.url, args.seconds)
    total_ms, wall = (time.process_time() - cpu0) * 1000, time.perf_counter() - wall0
    if result["error"]:
        print(result["error"], file=sys.stderr)
        return 1
    sent = int(args.seconds / 0.02)
    received = round(result["audio_received_s"] / 0.08)
    print(f"{'what':<34} {'value':>10}")
    print(f"{'wall time':<34} {wall:>9.2f}s")
    cpu_ms = result["probe_cpu_ms"]
    print(f"{'probe CPU, whole run':<34} {total_ms:>8.1f}ms")
    print(f"{'probe CPU while streaming':<34} {cpu_ms:>8.1f}ms")
    print(f"{'20 ms frames sent':<34} {sent:>10}")
    print(f"{'80 ms frames received':<34} {received:>10}")
    print(f"{'CPU per frame sent or received':<34} {cpu_ms / (sent + received):>8.3f}ms")
    print(f"{'CPU per 80 ms of conversation':<34} {cpu_ms / (args.seconds / 0.08):>8.3f}ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
