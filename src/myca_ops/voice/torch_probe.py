"""What torch can do in the interpreter that runs this file, as one JSON line: its CUDA devices,
Triton, and whether torch.compile works (model.probe runs it, and model.recommend reads it).

Run as a file in a fresh interpreter, which may hold torch but not myca_ops: it imports nothing of
this package.  A failed torch.compile must leave nothing in the caller's process, and moshi must
not be imported yet.  torch.compile of a tiny function on CUDA goes through inductor, Triton, the
C compiler and Python.h: exactly what moshi needs at its first frame.
"""

import json
import os
import platform
import shutil
import sys
import sysconfig


def facts() -> dict:
    out: dict = {
        "system": platform.system(),
        "python": sys.executable,
        "torch_cuda_available": False,
        "torch_devices": [],
        "torch_arch_list": [],
        "triton_compiles": False,
        "c_compiler": shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc"),
        "python_headers": os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")),
    }
    out.update(dict.fromkeys(("torch_version", "torch_cuda_version", "triton_version", "triton_error", "probe_error")))
    try:
        import torch
    except Exception as exc:
        out["probe_error"] = f"torch is not importable: {exc}"
        return out
    out["torch_version"] = torch.__version__.split("+")[0]
    out["torch_cuda_version"] = torch.version.cuda
    out["torch_cuda_available"] = bool(torch.cuda.is_available())
    if out["torch_cuda_available"]:
        out["torch_arch_list"] = torch.cuda.get_arch_list()
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            device = {"name": torch.cuda.get_device_name(i), "capability": f"{major}.{minor}"}
            out["torch_devices"].append(device)
            try:
                free, total = torch.cuda.mem_get_info(i)
            except Exception as exc:  # a GPU this torch has no kernels for may refuse any CUDA call
                device["error"] = str(exc).strip().splitlines()[0]
                continue
            device.update(memory_total_mib=total // 2**20, memory_free_mib=free // 2**20)
    try:
        import triton

        out["triton_version"] = triton.__version__
    except Exception as exc:
        out["triton_error"] = f"triton is not importable: {exc}"
    if out["torch_cuda_available"] and out["triton_version"]:
        try:
            out["triton_compiles"] = torch.compile(lambda x: x * 2 + 1)(torch.ones(8, device="cuda")).sum().item() == 24
        except Exception as exc:
            lines = [line for line in str(exc).strip().splitlines() if line.strip()]
            out["triton_error"] = f"{type(exc).__name__}: {lines[-1] if lines else ''}"
    return out


if __name__ == "__main__":
    print(json.dumps(facts()))
