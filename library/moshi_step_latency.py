#!/usr/bin/python
# Measure Moshi's per-frame step latency on the host and judge whether it is real-time.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: moshi_step_latency
short_description: Measure Moshi's per-frame step latency against the 80 ms frame budget
description:
  - Loads the service's model (same weights, config, dtype and device, read from its environment
    file) in the service's venv, warms up, then times frames of C(mimi.encode), C(lm_gen.step) and
    C(mimi.decode) per stage (CUDA events on a GPU).
  - Returns p50, p95, p99 and max per stage, the real-time factor (p99 / 80 ms) and a verdict
    with its cause.
  - With O(mode=compare) it also measures eager (the slow mode), graphs only and graphs with
    torch.compile, each in its own process.
  - With O(source=service_log) it reads the service's own frame times from its journal instead,
    with no model load.
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
    description: Measure a model load (V(measure)), or read the service log (V(service_log)).
    type: str
    choices: [measure, service_log]
    default: measure
  mode:
    description: The service's own mode (V(service)), or all three modes (V(compare)).
    type: str
    choices: [service, compare]
    default: service
  frames:
    description: Frames timed after the warm-up.
    type: int
    default: 100
  warmup:
    description: Frames run before timing.
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
    description: Fail when the verdict is not real-time.
    type: bool
    default: false
  timeout:
    description: Seconds the whole measurement may take.
    type: int
    default: 3600
attributes:
  check_mode:
    support: partial
    details: Measures in check mode (a read); with O(stop_service=true) it only says it would stop the unit.
  diff_mode:
    support: none
notes:
  - Free GPU memory is checked before loading; the running service is never touched unless
    O(stop_service=true).
  - On CPU the honest verdict is "not real-time" for the full model; a verdict always comes from
    the measurement of the deployed model, never from whether a GPU is present.
author: myca-ops
extends_documentation_fragment:
  - myca_container  # doc_fragments/, named in ansible.cfg
"""

EXAMPLES = r"""
- name: Measure the service's mode and fail when it cannot keep up
  moshi_step_latency:
    require_realtime: true
  register: step

- name: Compare eager, graphs and graphs+compile on this GPU, with the service stopped
  moshi_step_latency:
    mode: compare
    stop_service: true
"""

RETURN = r"""
realtime:
  description: Whether the p99 frame of the first measured mode fits the 80 ms budget.
  returned: success
  type: bool
  sample: false
cause:
  description: Why, with the figures; names what to change when not real-time.
  returned: success
  type: str
  sample: 'no CUDA device: p99 241.0 ms per frame against a 80 ms budget on CPU'
mode:
  description: The mode measured first (the service's).
  returned: success
  type: str
  sample: graphs
mode_reason:
  description: Why the service runs in that mode.
  returned: success
  type: str
  sample: 'Triton cannot compile (no C compiler): CUDA graphs need no Triton'
budget_ms:
  description: The frame budget, 80 ms (12.5 frames per second).
  returned: success
  type: float
  sample: 80.0
results:
  description: One entry per measured mode, the service's first.
  returned: success
  type: list
  elements: dict
  contains:
    mode:
      description: The mode (V(cpu), V(eager), V(graphs) or V(compile+graphs)).
      type: str
      sample: cpu
    device:
      description: The torch device measured on.
      type: str
      sample: cuda
    load_s:
      description: Seconds the model took to load.
      type: float
      sample: 12.4
    stages:
      description: Per stage (encode, lm_step, decode, total), count, p50, p95, p99 and max in ms.
      type: dict
      sample:
        total:
          count: 100
          p50: 31.2
          p95: 33.0
          p99: 35.1
          max: 40.2
    samples_ms:
      description: Each timed frame's total in ms, in order (the verify report's histogram).
      type: list
      elements: float
      sample:
      - 31.0
      - 30.8
      - 35.1
    realtime_factor:
      description: p99 of the total over the 80 ms budget (under 1 keeps up).
      type: float
      sample: 0.44
    gpu_name:
      description: The GPU's name, null on CPU.
      type: str
      sample: NVIDIA H100 80GB HBM3
    torch_version:
      description: torch in the venv.
      type: str
      sample: 2.9.1+cu128
    triton_version:
      description: Triton in the venv, null without it.
      type: str
      sample: 3.5.1
    realtime:
      description: Whether this mode keeps up.
      type: bool
      sample: true
    cause:
      description: This mode's verdict with its figures.
      type: str
      sample: p99 35.1 ms per frame fits the 80 ms budget
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.myca_venv import run_json


def main():
    module = AnsibleModule(
        argument_spec=dict(
            python=dict(type="path", default="/opt/moshi/venv/bin/python"),
            env_file=dict(type="path", default="/etc/moshi/moshi.env"),
            source=dict(type="str", choices=["measure", "service_log"], default="measure"),
            mode=dict(type="str", choices=["service", "compare"], default="service"),
            frames=dict(type="int", default=100),
            warmup=dict(type="int", default=10),
            since=dict(type="str", default="-15min"),
            unit=dict(type="str", default="moshi"),
            stop_service=dict(type="bool", default=False),
            require_realtime=dict(type="bool", default=False),
            container=dict(type="str"),
            timeout=dict(type="int", default=3600),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["frames"] < 1 or p["warmup"] < 0:
        module.fail_json(msg="frames must be at least 1 and warmup at least 0")
    args = ["-m", "myca_ops.voice.latency", "--env-file", p["env_file"]]
    if p["source"] == "service_log":
        args += ["--service-log", p["since"], "--unit", p["unit"]]
    else:
        args += ["--frames", str(p["frames"]), "--warmup", str(p["warmup"])]
        args += ["--compare"] if p["mode"] == "compare" else []
    if p["container"] and (p["stop_service"] or p["source"] == "service_log"):
        module.fail_json(
            msg="stop_service and source=service_log read a systemd unit; with container, measure beside it"
        )
    stopping = p["stop_service"] and p["source"] == "measure"
    if stopping and module.check_mode:
        module.exit_json(changed=False, skipped=True, msg="check mode: would stop %s to measure" % p["unit"])
    if stopping:
        module.run_command(["systemctl", "stop", p["unit"]], check_rc=True)
    try:
        result = run_json(module, p["python"], args, p["timeout"], container=p["container"])
    finally:
        if stopping:
            module.run_command(["systemctl", "start", p["unit"]], check_rc=True)
    if result.get("error"):
        module.fail_json(msg=result["error"], **{k: v for k, v in result.items() if k != "error"})
    if p["require_realtime"] and not result["realtime"]:
        module.fail_json(msg="Moshi is not real-time on this host: %s" % result["cause"], **result)
    module.exit_json(changed=stopping, **result)


if __name__ == "__main__":
    main()
