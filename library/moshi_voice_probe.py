#!/usr/bin/python
# Talk to Moshi's /api/chat like the browser does and measure what a listener would hear.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: moshi_voice_probe
short_description: A real voice round trip through Moshi's websocket, timed as a listener hears it
description:
  - Connects to the chat endpoint (C(ws://) or C(wss://), path C(/api/chat)), times the handshake byte, streams speech-like
    audio in real time as Opus (24 kHz, 20 ms frames), records every audio and text message and
    decodes the audio.
  - Reports the time to first audio, the audio received against wall time, the inter-arrival gaps
    and the underruns of the web client's 48 kHz playback buffer (1920 samples), with a verdict.
  - With O(callers) above 1 it is a load test, N such callers at once with staggered starts, each
    with its own figures and outcome (real-time, late, cut off, refused), and a summary.
options:
  python:
    description: Interpreter of a venv with myca_ops, aiohttp, sphn and numpy (Moshi's venv has them).
    type: path
    default: /opt/moshi/venv/bin/python
  url:
    description: The chat endpoint, C(ws://) or C(wss://).
    type: str
    default: ws://127.0.0.1:8998/api/chat
  seconds:
    description: Seconds of audio to stream.
    type: float
    default: 10
  cafile:
    description: CA bundle to verify a C(wss://) server with.
    type: path
  token:
    description: Bearer token for a bridge with token auth (sent as a header, kept out of argv).
    type: str
  ticket:
    description:
      - A ticket for one session through a bridge that takes tickets, as a browser sends it (C(?ticket=), kept out
        of argv), with I(origin), the page it was minted for. A single probe only (a ticket opens one session).
    type: str
  origin:
    description: The Origin header a browser would send (the page's origin); with I(ticket).
    type: str
  first_caller:
    description:
      - A load test spread over hosts, this host's share (playbooks/loadtest.yml with C(loadtest_from)) the
        number of its first caller; the shares are joined with the C(myca_merged_load) filter.
    type: int
    default: 0
  start_at:
    description:
      - A load test spread over hosts, when caller 0 starts (wall clock, seconds since 1970; caller I(n) starts
        I(n) * I(stagger_s) later), the same on every host. Default, as soon as this host's callers are ready.
    type: float
  validate_certs:
    description: Verify the TLS certificate (false for a self-signed lab certificate).
    type: bool
    default: true
  callers:
    description: Callers at once (a load test); 1 is a single probe.
    type: int
    default: 1
  stagger_s:
    description: Seconds between the callers' starts in a load test.
    type: float
    default: 0.5
  require_realtime:
    description: Fail when the verdict is not real-time (in a load test, when any caller is not served in real time).
    type: bool
    default: false
  timeout:
    description: Seconds the probe may take.
    type: int
    default: 120
attributes:
  check_mode:
    support: partial
    details: In check mode only the handshake is made; RV(realtime) is null.
  diff_mode:
    support: none
notes:
  - moshi.server serves one session at a time; a probe against it while busy waits for the handshake. The batched
    server and the bridge close a caller they have no slot for (1013), and the probe reports it refused.
author: myca-ops
"""

EXAMPLES = r"""
- name: Ten seconds of voice through the bridge
  moshi_voice_probe:
    url: ws://127.0.0.1:8999/api/chat
    seconds: 10
  register: voice
"""

RETURN = r"""
realtime:
  description: Audio kept up (no underrun, at least 0.95x real time); null in check mode. In a load test, every
    caller did.
  returned: success
  type: bool
  sample: true
cause:
  description: Why, with the figures.
  returned: success
  type: str
  sample: 3.92s of audio in 4.01s, no underrun, first audio after 218 ms
url:
  description: The endpoint probed.
  returned: success
  type: str
  sample: ws://127.0.0.1:8998/api/chat
handshake_ms:
  description: Time to the 0x00 handshake byte (through HAProxy, the wait in its queue included).
  returned: a single probe
  type: float
  sample: 4.2
first_audio_ms:
  description: Time from the first audio sent to the first audio received.
  returned: a single probe
  type: float
  sample: 218.0
underruns:
  description: Times the web client's playback buffer would have run dry.
  returned: a single probe
  type: int
  sample: 0
audio_messages:
  description: Audio messages received.
  returned: a single probe
  type: int
  sample: 49
gap_ms:
  description: Inter-arrival gaps of the audio messages.
  returned: a single probe
  type: dict
  contains:
    count:
      description: Gaps measured.
      type: int
      sample: 48
    p50:
      description: Median gap in ms.
      type: float
      sample: 80.1
    p95:
      description: 95th percentile in ms.
      type: float
      sample: 84.0
    p99:
      description: 99th percentile in ms.
      type: float
      sample: 90.2
    max:
      description: Longest gap in ms.
      type: float
      sample: 95.0
seconds:
  description: Seconds of audio the probe was to stream (O(seconds)).
  returned: always
  type: float
  sample: 10.0
error:
  description: Why the probe could not talk to the server (or was refused); null when it did. A set error fails the task.
  returned: always
  type: str
  sample: null
waited_ms:
  description: Time until the handshake or the refusal (the wait for a slot included).
  returned: a single probe
  type: float
  sample: 4.2
wall_s:
  description: Seconds from the first audio sent to the end of the stream.
  returned: a single probe
  type: float
  sample: 10.9
sent_s:
  description: Seconds of audio sent.
  returned: a single probe
  type: float
  sample: 10.0
sent_bytes:
  description: Opus bytes sent.
  returned: a single probe
  type: int
  sample: 28412
audio_received_s:
  description: Seconds of audio received.
  returned: a single probe
  type: float
  sample: 9.92
audio_wall_s:
  description: Seconds from the first audio received to the end of the last.
  returned: a single probe
  type: float
  sample: 10.01
realtime_ratio:
  description: RV(audio_received_s) over RV(audio_wall_s) (1.0 keeps up).
  returned: a single probe
  type: float
  sample: 0.991
underrun_s:
  description: When each underrun happened, seconds after the first send.
  returned: a single probe
  type: list
  elements: float
  sample: []
arrival_s:
  description: When each decoded audio message arrived, seconds after the first send (the verify page's picture).
  returned: a single probe
  type: list
  elements: float
  sample: [0.218, 0.298]
close_code:
  description: The server's close code when it ended the session first (or refused it); null otherwise.
  returned: a single probe
  type: int
  sample: null
close_reason:
  description: The server's close reason with RV(close_code).
  returned: a single probe
  type: str
  sample: null
text_pieces:
  description: Text messages received.
  returned: a single probe
  type: int
  sample: 12
text:
  description: The text received, its first 200 characters.
  returned: a single probe
  type: str
  sample: hello there
other_kinds:
  description: Messages of other kinds received, by kind.
  returned: a single probe
  type: dict
  sample:
    '6': 1
probe_cpu_ms:
  description: CPU time of the probe's own process while streaming (sending, receiving, decoding).
  returned: a single probe
  type: float
  sample: 310.5
callers:
  description: A load test's callers, each with the single probe's figures plus C(caller), C(outcome),
    C(waited_ms) (until the handshake or the refusal), C(arrival_s) and C(underrun_s) (seconds after its first send),
    and C(close_code) with C(close_reason) when refused or cut off. Its moments on one clock, in seconds since the
    first caller connected (null where it did not get there), C(start_s) (it connected), C(handshake_s),
    C(stream_s) (its first send), C(first_audio_s) and C(end_s).
  returned: a load test
  type: list
  elements: dict
  sample:
  - caller: 0
    start_s: 0.0
    handshake_s: 0.021
    stream_s: 0.022
    first_audio_s: 0.252
    end_s: 3.41
    outcome: real-time
    handshake_ms: 21.0
    first_audio_ms: 230.0
    underruns: 0
own_lag_ms:
  description: How late the probe's own sends ran against its clock (count, p50, p95, p99, max). Over 20 ms at
    p99 the probe fell behind on its own machine, and its verdict says so instead of judging the server (a load
    test's caller is then C(caller lagged)).
  returned: a single probe
  type: dict
  sample:
    count: 200
    p50: 0.1
    p95: 0.4
    p99: 1.2
    max: 2.5
timing_only:
  description: Whether the probe counted what it heard from the Ogg pages instead of decoding it (false here).
  returned: a single probe
  type: bool
  sample: false
summary:
  description: Callers per outcome.
  returned: a load test
  type: dict
  sample:
    real-time: 3
    late: 1
    cut off: 0
    refused: 0
    caller lagged: 0
epoch:
  description: When the first caller connected (wall clock, seconds since 1970); the callers' moments count from it.
  returned: a load test
  type: float
  sample: 1796000000.25
server_health:
  description: When callers lagged on the control node, the server's own health (its tick figures), which the
    cause then quotes; null otherwise.
  returned: a load test
  type: dict
  sample: null
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.myca_venv import run_json


def main():
    module = AnsibleModule(
        argument_spec=dict(
            python=dict(type="path", default="/opt/moshi/venv/bin/python"),
            url=dict(type="str", default="ws://127.0.0.1:8998/api/chat"),
            seconds=dict(type="float", default=10),
            cafile=dict(type="path"),
            token=dict(type="str", no_log=True),
            ticket=dict(type="str", no_log=True),
            origin=dict(type="str"),
            first_caller=dict(type="int", default=0),
            start_at=dict(type="float"),
            validate_certs=dict(type="bool", default=True),
            callers=dict(type="int", default=1),
            stagger_s=dict(type="float", default=0.5),
            require_realtime=dict(type="bool", default=False),
            timeout=dict(type="int", default=120),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if not p["url"].startswith(("ws://", "wss://")):
        module.fail_json(msg="url must start with ws:// or wss://, got %s" % p["url"])
    if p["seconds"] <= 0:
        module.fail_json(msg="seconds must be positive")
    if p["callers"] < 1 or p["stagger_s"] < 0:
        module.fail_json(msg="callers must be at least 1 and stagger_s 0 or more")
    load_test = (p["callers"] > 1 or p["first_caller"] or p["start_at"]) and not module.check_mode
    program = "myca_ops.voice.loadtest" if load_test else "myca_ops.voice.probe"
    args = ["-m", program, "--url", p["url"], "--seconds", str(p["seconds"])]
    args += ["--cafile", p["cafile"]] if p["cafile"] else []
    args += [] if p["validate_certs"] else ["--insecure"]
    args += ["--handshake-only"] if module.check_mode else []
    if load_test:
        args += ["--callers", str(p["callers"]), "--stagger", str(p["stagger_s"]), "--first", str(p["first_caller"])]
        args += ["--start-at", repr(p["start_at"])] if p["start_at"] else []
    if p["ticket"] and p["callers"] > 1:
        module.fail_json(msg="a ticket opens one session: use a service token (token) for callers > 1")
    args += ["--origin", p["origin"]] if p["origin"] and not load_test else []  # with a ticket: one caller
    env = {"MYCA_PROBE_TOKEN": p["token"] or "", "MYCA_PROBE_TICKET": p["ticket"] or ""}
    result = run_json(module, p["python"], args, p["timeout"], env=env)
    if result["error"]:
        module.fail_json(msg=result["error"], **result)
    if p["require_realtime"] and result["realtime"] is False:
        module.fail_json(msg="Voice is not real-time through %s: %s" % (p["url"], result["cause"]), **result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
