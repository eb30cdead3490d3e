#!/usr/bin/python
# Measure how many conversations Moshi carries in real time on this host, on the engine that serves them.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: moshi_step_latency
short_description: Measure how many conversations Moshi carries in real time on this host
description:
  - Loads the service's model as the batched server does (the same weights, dtype, device, sampling and
    mode, read from its environment file, through myca_ops.voice.model), makes the server's engine with the
    service's slot count, warms it up as the server does, and times its tick (C(mimi.encode),
    C(lm_gen.step) and C(mimi.decode) for every slot at once) with every slot talking, the worst case.
    CUDA events on a GPU, perf_counter on CPU.
  - Then one slot alone (a single session) and, when the configured slots do not fit the 80 ms budget,
    fewer, until the largest count that fits is found. Returns per slot count the tick's p50, p95, p99
    and max per stage and the GPU memory per slot, and a capacity verdict with its cause, for example
    "carries 16 conversations in real time (tick p99 21.3 ms at 16 slots, budget 80 ms)".
  - The slot count is the service's C(moshi_slots); with 0 on a GPU, the running service's own count from its
    /healthz, else counted from free memory as the service counts it; 1 for O(source=service_log) and for
    moshi.server (C(moshi_server=upstream)), which serves one conversation.
  - With O(source=server) the running batched server measures itself (its C(POST /api/measure), asked from
    the host itself) - its served engine, every free slot talking speech-like audio beside its callers, none
    cut (a caller who comes takes a measuring slot) - so no second copy of the model is loaded and a GPU the
    service fills (a 24 GB card) is measured too; the verdict says how many callers talked beside it. While
    another measurement runs, the live tick figures of its /healthz. The moshi role's verify uses it for the
    batched server.
  - With O(source=measure) it runs in a process of its own beside the service, not inside it. What an
    operator gives up. Beside a service that is serving, the two share the device and the figures are
    pessimistic; on a GPU the measurement needs memory for a second copy of the model and its slots, or
    O(stop_service=true), which takes the service down for the measurement (a model load and the ticks).
  - With O(mode=compare) it also measures eager (the slow mode), graphs only and graphs with
    torch.compile, each in its own process, at the service's slot count.
  - With O(source=service_log) it reads moshi.server's own frame times from its journal instead,
    with no model load (C(moshi_server=upstream)).
options:
  python:
    description: The Moshi venv's interpreter (myca_ops installed in it).
    type: path
    default: /opt/moshi/venv/bin/python
  env_file:
    description: The service's environment file (the moshi role writes it).
    type: path
    default: /etc/moshi/moshi.env
  source:
    description: Ask the running batched server (V(server)), measure a second copy (V(measure)), or read
      moshi.server's log (V(service_log)).
    type: str
    choices: [server, measure, service_log]
    default: measure
  mode:
    description: The service's own mode (V(service)), or all three modes (V(compare), with O(source=measure)).
    type: str
    choices: [service, compare]
    default: service
  frames:
    description: Ticks timed per slot count, after the warm-up.
    type: int
    default: 100
  warmup:
    description: Ticks run before timing, per slot count.
    type: int
    default: 10
  since:
    description: Journal window for O(source=service_log), in journalctl's C(--since) syntax.
    type: str
    default: "-15min"
  unit:
    description: The service's systemd unit.
    type: str
    default: moshi
  stop_service:
    description: Stop the unit during the measurement (frees the GPU) and start it again.
    type: bool
    default: false
  require_realtime:
    description: Fail when the configured slots do not all fit the budget (the cause names the count that does).
    type: bool
    default: false
  timeout:
    description: Seconds the whole measurement may take.
    type: int
    default: 3600
attributes:
  check_mode:
    support: partial
    details: In check mode O(source=server) and O(source=service_log) measure (a read); O(source=measure) loads
      nothing and is skipped, and so is every source where the venv is not there yet (a fresh host).
  diff_mode:
    support: none
notes:
  - Free GPU memory is checked before loading; the running service is never touched unless
    O(stop_service=true).
  - A service in a container is measured inside it (run the task through the C(community.docker.docker_api)
    connection, as the moshi role's C(verify) does); O(stop_service) and O(source=service_log) read a systemd unit
    and are for a service that runs as one.
  - On CPU the honest count for the lab's two slots is 1 or 0; a verdict always comes from the measurement
    of the deployed model, never from whether a GPU is present.
  - O(source=server) measures at the service's own slot count only (its ticks step every slot); when they
    do not fit, the cause says to lower C(moshi_slots), and O(source=measure) with O(stop_service=true)
    searches the count that fits.
author: myca-ops
"""

EXAMPLES = r"""
- name: Ask the running batched server to time its own ticks and fail when its slots do not fit
  moshi_step_latency:
    source: server
    require_realtime: true
  register: step

- name: Compare eager, graphs and graphs+compile on this GPU, with the service stopped
  moshi_step_latency:
    mode: compare
    stop_service: true
"""

RETURN = r"""
realtime:
  description: Whether the tick with all the configured slots talking fits the 80 ms budget (p99).
  returned: success
  type: bool
  sample: false
capacity:
  description: The most conversations this host carries in real time, up to the configured slots.
  returned: success
  type: int
  sample: 1
slots:
  description: The configured slot count measured first.
  returned: success
  type: int
  sample: 2
slots_source:
  description: Where that count comes from (moshi_slots, the running service, its /healthz, free memory).
  returned: success
  type: str
  sample: moshi_slots
cause:
  description: The capacity verdict with its figures; names what to change when the configured slots do not fit.
  returned: success
  type: str
  sample: 'no CUDA device (CPU): carries 1 of 2 conversations in real time (tick p99 85.9 ms at 2 slots,
    budget 80 ms); 1 fit (tick p99 72.1 ms): set moshi_slots: 1'
mode:
  description: The mode measured first (the service's).
  returned: success
  type: str
  sample: graphs
mode_reason:
  description: Why the service runs in that mode.
  returned: success
  type: str
  sample: 'CUDA graphs on, torch.compile off: Triton is not installed: pip install the triton release your torch names'
mode_limit:
  description: What keeps the mode below compile+graphs, as data (no_cuda, no_triton, triton_fails, forced);
    null for compile+graphs.
  returned: success
  type: str
  sample: no_triton
device:
  description: The torch device measured on.
  returned: success
  type: str
  sample: cuda
callers:
  description: With O(source=server), the most callers that talked beside the measurement.
  returned: O(source=server)
  type: int
  sample: 3
dtype:
  description: The LM's dtype, the service's (bfloat16 or float16 on a GPU, float32 on CPU).
  returned: O(source=measure)
  type: str
  sample: bfloat16
budget_ms:
  description: The frame budget, 80 ms (12.5 frames per second).
  returned: success
  type: float
  sample: 80.0
load_s:
  description: Seconds the model took to load.
  returned: O(source=measure)
  type: float
  sample: 12.4
gpu_name:
  description: The GPU's name, null on CPU.
  returned: O(source=measure) or O(source=server)
  type: str
  sample: NVIDIA H100 80GB HBM3
gpu_state:
  description: >-
    Each GPU's peaks while the ticks were measured, read through NVML every 0.5 s (busy ratio, memory used and in
    all, temperature, power), and every reason its clocks were held down (C(hw_thermal), C(sw_power_cap)...);
    null where NVML reads no GPU (a CPU host). A throttled GPU explains slow ticks that the model does not.
  returned: O(source=measure) or O(source=server)
  type: list
  elements: dict
  sample:
    - gpu: "0"
      name: NVIDIA H200
      samples: 12
      utilization_max: 0.97
      memory_used_max_bytes: 42949672960
      memory_total_bytes: 150754820096
      temperature_max_c: 61
      power_max_w: 612.5
      throttled: []
torch_version:
  description: torch in the venv (the served engine's, with O(source=server)).
  returned: O(source=measure) or O(source=server)
  type: str
  sample: 2.9.1+cu128
triton_version:
  description: Triton in the venv, null without it.
  returned: O(source=measure)
  type: str
  sample: 3.5.1
compare:
  description: With O(mode=compare), each mode's capacity and verdict, the service's first.
  returned: O(mode=compare) on a GPU
  type: list
  elements: dict
  sample:
  - mode: graphs
    capacity: 16
    realtime: true
    cause: carries 16 conversations in real time (tick p99 21.3 ms at 16 slots, budget 80 ms) in mode graphs
    error: null
results:
  description: One entry per measured slot count, the configured count first, then 1 and any counts searched.
  returned: success
  type: list
  elements: dict
  contains:
    slots:
      description: Slots in the engine, all talking.
      type: int
      sample: 2
    mode:
      description: The mode (V(cpu), V(eager), V(graphs) or V(compile+graphs)).
      type: str
      sample: cpu
    label:
      description: Mode and slot count, as the verify report's histogram names it.
      type: str
      sample: cpu, 2 slots
    stages:
      description: Per stage (encode, lm_step, decode, total), count, p50, p95, p99 and max of the tick in ms.
      type: dict
      sample:
        total:
          count: 100
          p50: 31.2
          p95: 33.0
          p99: 35.1
          max: 40.2
    samples_ms:
      description: Each timed tick's total in ms, in order (the verify report's histogram).
      type: list
      elements: float
      sample:
      - 31.0
      - 30.8
      - 35.1
    slot_mib:
      description: Memory per slot (KV caches, codec state) in MiB; with O(source=measure), GPU memory, null on CPU.
      type: float
      sample: 310.5
    realtime_factor:
      description: p99 of the tick over the 80 ms budget (under 1 keeps up).
      type: float
      sample: 0.44
    realtime:
      description: Whether this slot count keeps up.
      type: bool
      sample: true
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.myca_venv import run_json


def main():
    module = AnsibleModule(
        argument_spec=dict(
            python=dict(type="path", default="/opt/moshi/venv/bin/python"),
            env_file=dict(type="path", default="/etc/moshi/moshi.env"),
            source=dict(type="str", choices=["server", "measure", "service_log"], default="measure"),
            mode=dict(type="str", choices=["service", "compare"], default="service"),
            frames=dict(type="int", default=100),
            warmup=dict(type="int", default=10),
            since=dict(type="str", default="-15min"),
            unit=dict(type="str", default="moshi"),
            stop_service=dict(type="bool", default=False),
            require_realtime=dict(type="bool", default=False),
            timeout=dict(type="int", default=3600),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["frames"] < 1 or p["warmup"] < 0:
        module.fail_json(msg="frames must be at least 1 and warmup at least 0")
    if p["mode"] == "compare" and p["source"] != "measure":
        module.fail_json(msg="mode=compare loads each mode in a process of its own: use source=measure")
    if module.check_mode and p["source"] == "measure":
        module.exit_json(changed=False, skipped=True, msg="check mode: measuring a second copy loads the model")
    args = ["-m", "myca_ops.voice.latency", "--env-file", p["env_file"]]
    if p["source"] == "server":
        args += ["--served", "--frames", str(p["frames"]), "--warmup", str(p["warmup"]), "--timeout", str(p["timeout"])]
    elif p["source"] == "service_log":
        args += ["--service-log", p["since"], "--unit", p["unit"]]
    else:
        args += ["--frames", str(p["frames"]), "--warmup", str(p["warmup"])]
        args += ["--compare"] if p["mode"] == "compare" else []
    stopping = p["stop_service"] and p["source"] == "measure"
    if stopping:
        module.run_command(["systemctl", "stop", p["unit"]], check_rc=True)
    try:
        result = run_json(module, p["python"], args, p["timeout"])
    finally:
        if stopping:
            module.run_command(["systemctl", "start", p["unit"]], check_rc=True)
    if result.get("error"):
        module.fail_json(msg=result["error"], **{k: v for k, v in result.items() if k != "error"})
    if p["require_realtime"] and not result["realtime"]:
        module.fail_json(msg="Moshi's configured slots are not real-time on this host: %s" % result["cause"], **result)
    module.exit_json(changed=stopping, **result)


if __name__ == "__main__":
    main()
