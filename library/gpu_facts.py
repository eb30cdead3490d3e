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
  - Gets C(recommended_moshi_mode), C(compile+graphs), C(graphs) (CUDA graphs need only
    CUDA, not Triton) or C(cpu), with the reason, from C(python -m myca_ops.voice.model probe) run by
    O(python). The same function decides the mode for the service, C(myca-moshi serve --auto) and these
    facts. An interpreter without myca_ops (the system Python before the moshi role made its venv)
    gives no mode, and says so.
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
attributes:
  check_mode:
    support: full
    details: It only reads, in check mode too.
  diff_mode:
    support: none
  facts:
    support: full
notes:
  - A missing piece (no GPU, no Triton, no compiler) is a fact, never a failure.
  - Under WSL2 C(lspci) shows no GPU; nvidia-smi is looked for in O(wsl_lib_dir) too.
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
  description: Facts added to the host.
  returned: always
  type: complex
  contains:
    gpu_facts:
      description: What the host has for Moshi, and the mode it supports.
      returned: always
      type: dict
      contains:
        is_wsl2:
          description: The kernel is WSL2's.
          type: bool
          sample: false
        is_wsl1:
          description: The kernel is WSL1's (no GPU access).
          type: bool
          sample: false
        wsl_gpu_device:
          description: WSL2's GPU device (O(dxg_path)) exists.
          type: bool
          sample: false
        gpu_count:
          description: NVIDIA GPUs nvidia-smi lists.
          type: int
          sample: 1
        gpus:
          description: Each GPU.
          type: list
          elements: dict
          sample:
          - name: NVIDIA L4
            memory_total_mib: 23034
            memory_free_mib: 22700
            driver_version: '550.54'
        driver_version:
          description: The NVIDIA driver; null without one.
          type: str
          sample: '550.54'
        nvidia_smi:
          description: Path of nvidia-smi; null when absent.
          type: str
          sample: /usr/bin/nvidia-smi
        nvidia_smi_error:
          description: What nvidia-smi said when it failed.
          type: str
          sample: null
        triton_libcuda_path:
          description: 'WSL2: the folder with the Windows driver''s libcuda, for Triton.'
          type: str
          sample: null
        c_compiler:
          description: The C compiler inductor would use; null when none.
          type: str
          sample: /usr/bin/cc
        python:
          description: The interpreter probed.
          type: str
          sample: /opt/moshi/venv/bin/python
        python_headers:
          description: Python.h of that interpreter is installed.
          type: bool
          sample: true
        torch_version:
          description: torch in that interpreter; null when not importable.
          type: str
          sample: 2.9.1+cu128
        torch_cuda_available:
          description: torch sees a CUDA device.
          type: bool
          sample: true
        triton_version:
          description: Triton in that interpreter.
          type: str
          sample: 3.5.1
        triton_compiles:
          description: Triton compiled a tiny kernel through torch.compile.
          type: bool
          sample: true
        probe_error:
          description: Why the torch probe failed; null when it did not.
          type: str
          sample: null
        disk_free_gb:
          description: Free GiB on the file system of O(disk_path).
          type: float
          sample: 120.5
        recommended_moshi_mode:
          description: V(compile+graphs), V(graphs) (CUDA graphs need no Triton) or V(cpu); null when
            O(python) was not probed (no myca_ops or torch in it, or O(probe_torch=false)).
          type: str
          sample: compile+graphs
        recommended_moshi_mode_reason:
          description: Why that mode, or why none.
          type: str
          sample: 'CUDA and Triton 3.5.1 compile a kernel: torch.compile and CUDA graphs on'
        recommended_moshi_mode_limit:
          description: What keeps the mode below compile+graphs, as data (V(no_cuda), V(no_triton),
            V(triton_fails), V(not_probed), V(gpu_unsupported) for a torch with no kernels for the GPU); null for
            compile+graphs. The step-latency verdict reads it.
          type: str
          sample: no_triton
        kernel:
          description: The kernel version line read from O(proc_version_path).
          type: str
          sample: Linux version 6.6.87.2-microsoft-standard-WSL2 (root@...) ...
        wsl_distro_name:
          description: C(WSL_DISTRO_NAME) when the module runs in a WSL terminal; null in services and over ssh,
            where WSL does not set it.
          type: str
          sample: Ubuntu-24.04
        disk_path:
          description: The path whose file system RV(ansible_facts.gpu_facts.disk_free_gb) is about (O(disk_path)).
          type: str
          sample: /
        python_found:
          description: The interpreter O(python) exists.
          type: bool
          sample: true
        python_include:
          description: That interpreter's include folder (where Python.h belongs); null when it is not found.
          type: str
          sample: /usr/include/python3.11
        torch_cuda_version:
          description: The CUDA version torch was built with; null for a CPU build or without torch.
          type: str
          sample: '12.8'
        torch_devices:
          description: Each CUDA device torch sees, with its compute capability and memory; empty without one.
          type: list
          elements: dict
          sample:
          - name: NVIDIA L4
            capability: '8.9'
            memory_total_mib: 22478
            memory_free_mib: 22180
        torch_arch_list:
          description: >-
            The GPU architectures torch was built for (torch.cuda.get_arch_list()); a GPU none of them runs on
            gets no mode, limit V(gpu_unsupported), and the reason names the torch build to install.
          type: list
          elements: str
          sample: [sm_50, sm_60, sm_70, sm_75, sm_80, sm_86, sm_90]
        triton_error:
          description: Why Triton is not importable or did not compile the test kernel; null when it compiled or
            was not tried.
          type: str
          sample: 'triton is not importable: No module named ''triton'''
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
