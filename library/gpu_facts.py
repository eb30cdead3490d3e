#!/usr/bin/python
# Facts about a Moshi GPU host: WSL2, NVIDIA GPUs, torch/Triton and the inductor toolchain.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: gpu_facts
short_description: Facts about a GPU host and the fastest Moshi mode it supports
description:
  - Reads, never changes. Detects WSL2, NVIDIA GPUs through nvidia-smi (also in the WSL2
    driver folder), and, with an interpreter that has torch, whether torch sees CUDA and
    whether Triton can compile a kernel through torch.compile, plus the C compiler and
    Python headers that inductor needs at Moshi's first frame.
  - Derives C(recommended_moshi_mode), C(compile+graphs), C(graphs) (CUDA graphs need only
    CUDA, not Triton) or C(cpu), with the reason.
  - A missing piece is a fact, never a failure.
options:
  python:
    description: Interpreter whose torch, Triton and Python headers are probed (the one that runs Moshi).
    type: str
    default: /usr/bin/python3
  probe_torch:
    description: Import torch and Triton in I(python) and compile a tiny kernel on CUDA.
    type: bool
    default: true
  probe_timeout:
    description: Seconds the torch probe may take (a first Triton compile can take a minute).
    type: int
    default: 300
  proc_version_path:
    description: Kernel version file read to detect WSL2.
    type: path
    default: /proc/version
  dxg_path:
    description: WSL2's GPU paravirtualisation device.
    type: path
    default: /dev/dxg
  wsl_lib_dir:
    description: Where WSL2 maps the Windows driver's libcuda and nvidia-smi.
    type: path
    default: /usr/lib/wsl/lib
  disk_path:
    description: Path whose file system's free space is reported (where the weights go).
    type: path
    default: /
author: myca-ops
"""

EXAMPLES = r"""
- name: Read the GPU host's facts with the Moshi venv's interpreter
  gpu_facts:
    python: /opt/moshi/venv/bin/python

- name: Show the mode Moshi will run in
  ansible.builtin.debug:
    msg: "{{ gpu_facts.recommended_moshi_mode }}: {{ gpu_facts.recommended_moshi_mode_reason }}"
"""

RETURN = r"""
ansible_facts:
  description: C(gpu_facts), a dict with is_wsl2, is_wsl1, wsl_gpu_device, wsl_distro_name, kernel,
    nvidia_smi, nvidia_smi_error, gpus (name, memory_total_mib, memory_free_mib, driver_version),
    gpu_count, driver_version, triton_libcuda_path, c_compiler, python, python_found,
    python_include, python_headers, torch_version, torch_cuda_available, torch_cuda_version,
    torch_devices, triton_version, triton_compiles, triton_error, probe_error, disk_path,
    disk_free_gb, recommended_moshi_mode, recommended_moshi_mode_reason.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.myca_gpu import collect


def main():
    module = AnsibleModule(
        argument_spec=dict(
            python=dict(type="str", default="/usr/bin/python3"),
            probe_torch=dict(type="bool", default=True),
            probe_timeout=dict(type="int", default=300),
            proc_version_path=dict(type="path", default="/proc/version"),
            dxg_path=dict(type="path", default="/dev/dxg"),
            wsl_lib_dir=dict(type="path", default="/usr/lib/wsl/lib"),
            disk_path=dict(type="path", default="/"),
        ),
        supports_check_mode=True,
    )
    facts = collect(**module.params)
    module.exit_json(changed=False, ansible_facts={"gpu_facts": facts})


if __name__ == "__main__":
    main()
