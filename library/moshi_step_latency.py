#!/usr/bin/python
# Measure Moshi's per-frame step latency on the host and judge whether it is real-time.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: moshi_step_latency
short_description: Measure Moshi's per-frame step latency against the 80 ms frame budget
description:
  - Loads the service's model (same weights, config, dtype, device, from its environment file)
    in the service's venv, warms up, then times frames of mimi.encode, lm_gen.step and
    mimi.decode per stage (CUDA events on a GPU). Returns p50/p95/p99/max per stage, the
    real-time factor (p99 / 80 ms) and a verdict with its cause.
  - C(mode=compare) also measures eager (the slow mode), graphs only and graphs+compile, each in
    its own process. C(source=service_log) reads the service's own frame times from its journal
    instead, with no model load.
  - Checks free GPU memory before loading and never touches the running service unless
    I(stop_service) is set, in which case it is stopped for the measurement and started again.
options:
  python: {description: The moshi venv's interpreter (myca_ops installed)., type: path, default: /opt/moshi/venv/bin/python}
  env_file: {description: The service's environment file., type: path, default: /etc/moshi/moshi.env}
  source: {description: Measure a model load, or read the service log., type: str, choices: [measure, service_log], default: measure}
  mode: {description: The service's own mode, or all three modes., type: str, choices: [service, compare], default: service}
  frames: {description: Frames timed after the warm-up., type: int, default: 100}
  warmup: {description: Frames run before timing., type: int, default: 10}
  since: {description: "Journal window for source=service_log, in journalctl's --since syntax.", type: str, default: "-15min"}
  unit: {description: The service's systemd unit., type: str, default: moshi}
  stop_service: {description: Stop the unit during the measurement (frees the GPU) and start it again., type: bool, default: false}
  require_realtime: {description: Fail when the verdict is not real-time., type: bool, default: false}
  timeout: {description: Seconds the whole measurement may take., type: int, default: 3600}
author: myca-ops
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
realtime: {description: Whether the p99 frame fits the 80 ms budget., returned: success, type: bool}
cause: {description: Why, with the figures; names what to change when not real-time., returned: success, type: str}
mode: {description: The mode measured first (the service's)., returned: success, type: str}
mode_reason: {description: Why the service runs in that mode., returned: success, type: str}
results:
  description: Per mode, stages (encode, lm_step, decode, total) with count/p50/p95/p99/max in ms,
    realtime_factor, gpu_name, torch_version, triton_version, load_s, realtime and cause.
  returned: success
  type: list
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
    stopping = p["stop_service"] and p["source"] == "measure"
    if stopping and module.check_mode:
        module.exit_json(changed=False, skipped=True, msg="check mode: would stop %s to measure" % p["unit"])
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
        module.fail_json(msg="Moshi is not real-time on this host: %s" % result["cause"], **result)
    module.exit_json(changed=stopping, **result)


if __name__ == "__main__":
    main()
