# Facts about a GPU host, for the gpu_facts module.  Pure Python (no Ansible import), so
# pytest imports it directly.  Every missing piece is reported as a fact, never raised.

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

NVIDIA_SMI_QUERY = [
    "--query-gpu=name,memory.total,memory.free,driver_version",
    "--format=csv,noheader,nounits",
]

# Run by the interpreter that will run Moshi.  torch.compile of a tiny function on CUDA
# goes through inductor, Triton, the C compiler and Python.h: exactly what moshi needs at
# its first frame.  Caches go to a temporary folder: facts never change the host.
TORCH_PROBE = r"""
import json, sys
out = {"torch_version": None, "torch_cuda_available": False, "torch_cuda_version": None,
       "torch_devices": [], "triton_version": None, "triton_compiles": False, "triton_error": None}
try:
    import torch
except Exception as exc:
    out["probe_error"] = "torch is not importable: %s" % exc
    print(json.dumps(out)); sys.exit(0)
out["torch_version"] = torch.__version__
out["torch_cuda_version"] = torch.version.cuda
out["torch_cuda_available"] = bool(torch.cuda.is_available())
if out["torch_cuda_available"]:
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        out["torch_devices"].append({"name": torch.cuda.get_device_name(i),
                                     "memory_total_mib": total // 2**20, "memory_free_mib": free // 2**20})
try:
    import triton
    out["triton_version"] = triton.__version__
except Exception as exc:
    out["triton_error"] = "triton is not importable: %s" % exc
if out["torch_cuda_available"] and out["triton_version"]:
    try:
        fn = torch.compile(lambda x: x * 2 + 1)
        ok = fn(torch.ones(8, device="cuda")).sum().item() == 24
        out["triton_compiles"] = bool(ok)
    except Exception as exc:
        lines = [l for l in str(exc).strip().splitlines() if l.strip()]
        out["triton_error"] = "%s: %s" % (type(exc).__name__, lines[-1] if lines else "")
print(json.dumps(out))
"""


def parse_proc_version(text: str) -> dict:
    """WSL2 kernels say 'microsoft' in lower case (…-microsoft-standard-WSL2); WSL1 says 'Microsoft'."""
    return {
        "is_wsl2": "microsoft" in text,
        "is_wsl1": "Microsoft" in text and "microsoft" not in text,
    }


def _number(value: str):
    value = value.strip()
    try:
        return int(float(value))
    except ValueError:
        return None  # "[N/A]" under WSL2's partial NVML


def parse_nvidia_smi(csv_text: str) -> list[dict]:
    gpus = []
    for line in csv_text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4 or not parts[0]:
            continue
        gpus.append(
            {
                "name": parts[0],
                "memory_total_mib": _number(parts[1]),
                "memory_free_mib": _number(parts[2]),
                "driver_version": parts[3],
            }
        )
    return gpus


def recommend_mode(facts: dict) -> tuple[str, str]:
    """The fastest Moshi mode that works here, and why.  CUDA graphs need only CUDA."""
    torch_probed = facts.get("torch_version") is not None
    if torch_probed:
        cuda = facts.get("torch_cuda_available", False)
        no_cuda = "torch %s sees no CUDA device" % facts["torch_version"]
    else:
        cuda = facts.get("gpu_count", 0) > 0
        no_cuda = "no NVIDIA GPU found (nvidia-smi %s)" % ("lists none" if facts.get("nvidia_smi") else "not found")
    if not cuda:
        return "cpu", no_cuda
    missing = []
    if not torch_probed:
        missing.append("Triton not checked: no torch in %s" % facts.get("python"))
    elif not facts.get("triton_version"):
        missing.append("Triton is not installed")
    elif not facts.get("triton_compiles"):
        missing.append("Triton cannot compile: %s" % (facts.get("triton_error") or "unknown error"))
    if not facts.get("c_compiler"):
        missing.append("no C compiler (install gcc)")
    if not facts.get("python_headers"):
        missing.append("Python.h missing for %s (install python3-dev)" % facts.get("python"))
    if missing:
        return "graphs", "CUDA graphs on, torch.compile off: " + "; ".join(missing)
    return "compile+graphs", "CUDA and a working Triton toolchain: torch.compile and CUDA graphs on"


def _run(cmd: list[str], timeout: float) -> tuple[int, str, str]:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, "", str(exc)
    return p.returncode, p.stdout, p.stderr


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def free_gb(path: str):
    """Free space on the file system that holds `path`, or its nearest existing parent."""
    while path and not os.path.exists(path):
        path = os.path.dirname(path.rstrip("/")) or "/"
    try:
        return round(shutil.disk_usage(path).free / 2**30, 1)
    except OSError:
        return None


def collect(
    python: str = "/usr/bin/python3",
    proc_version_path: str = "/proc/version",
    dxg_path: str = "/dev/dxg",
    wsl_lib_dir: str = "/usr/lib/wsl/lib",
    disk_path: str = "/",
    probe_torch: bool = True,
    probe_timeout: float = 300,
    env: dict | None = None,
) -> dict:
    env = os.environ if env is None else env
    proc_version = _read(proc_version_path).strip()
    facts = parse_proc_version(proc_version)
    facts.update(
        kernel=proc_version,
        wsl_gpu_device=os.path.exists(dxg_path),
        wsl_distro_name=env.get("WSL_DISTRO_NAME") or None,
        python=python,
        disk_path=disk_path,
        disk_free_gb=free_gb(disk_path),
    )
    # On WSL2 the Windows driver maps nvidia-smi and libcuda into wsl_lib_dir, often off PATH.
    smi = shutil.which("nvidia-smi") or shutil.which("nvidia-smi", path=wsl_lib_dir)
    facts["nvidia_smi"] = smi
    facts["nvidia_smi_error"] = None
    gpus: list[dict] = []
    if smi:
        rc, out, err = _run([smi, *NVIDIA_SMI_QUERY], 30)
        if rc == 0:
            gpus = parse_nvidia_smi(out)
        else:
            facts["nvidia_smi_error"] = (err or out).strip()[-500:]
    facts["gpus"] = gpus
    facts["gpu_count"] = len(gpus)
    facts["driver_version"] = gpus[0]["driver_version"] if gpus else None
    libcuda_in_wsl = os.path.exists(os.path.join(wsl_lib_dir, "libcuda.so")) or os.path.exists(
        os.path.join(wsl_lib_dir, "libcuda.so.1")
    )
    facts["triton_libcuda_path"] = wsl_lib_dir if facts["is_wsl2"] and libcuda_in_wsl else None

    facts["c_compiler"] = (
        shutil.which(env.get("CC", "")) if env.get("CC") else (shutil.which("cc") or shutil.which("gcc"))
    )
    facts["python_found"] = bool(shutil.which(python))
    facts["python_include"] = None
    facts["python_headers"] = False
    if facts["python_found"]:
        rc, out, _ = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['include'])"], 30)
        if rc == 0:
            facts["python_include"] = out.strip()
            facts["python_headers"] = os.path.exists(os.path.join(out.strip(), "Python.h"))

    torch = {"torch_version": None, "torch_cuda_available": False, "torch_cuda_version": None, "torch_devices": []}
    torch.update(triton_version=None, triton_compiles=False, triton_error=None, probe_error=None)
    if probe_torch and facts["python_found"]:
        # The service gets TRITON_LIBCUDA_PATH on WSL2; the probe must see the same.
        extra = {"TRITON_LIBCUDA_PATH": facts["triton_libcuda_path"]} if facts["triton_libcuda_path"] else {}
        torch.update(_probe_torch(python, probe_timeout, extra))
    facts.update(torch)
    facts["recommended_moshi_mode"], facts["recommended_moshi_mode_reason"] = recommend_mode(facts)
    return facts


def _probe_torch(python: str, timeout: float, extra_env: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="gpu-facts-") as tmp:
        script = os.path.join(tmp, "probe.py")  # triton.jit reads source, so no `python -c`
        with open(script, "w") as f:
            f.write(TORCH_PROBE)
        cmd = [
            "env",
            f"TRITON_CACHE_DIR={tmp}/triton",
            f"TORCHINDUCTOR_CACHE_DIR={tmp}/inductor",
            *(f"{k}={v}" for k, v in extra_env.items()),
            python,
            script,
        ]
        rc, out, err = _run(cmd, timeout)
    lines = out.strip().splitlines()
    if rc == 0 and lines:
        try:
            return json.loads(lines[-1])
        except ValueError:
            pass
    return {"probe_error": "torch probe failed (exit %s): %s" % (rc, (err or out).strip()[-500:])}
