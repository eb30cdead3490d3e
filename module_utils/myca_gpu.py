# Facts about a GPU host, for the gpu_facts module.  Pure Python (no Ansible import), so
# pytest imports it directly.  Every missing piece is reported as a fact, never raised.

from __future__ import annotations

import json
import os
import shutil
import subprocess

NVIDIA_SMI_QUERY = [
    "--query-gpu=name,memory.total,memory.free,driver_version",
    "--format=csv,noheader,nounits",
]

# The interpreter that will run Moshi probes itself with myca_ops (installed in its venv by the
# moshi role): its CUDA, Triton and the mode it gets come from myca_ops.voice.model, the one
# place that decides the mode.  Caches go to a temporary folder: facts never change the host.
MODEL_PROBE = ["-m", "myca_ops.voice.model", "probe"]
NOT_PROBED = {
    "torch_version": None,
    "torch_cuda_available": False,
    "torch_cuda_version": None,
    "torch_devices": [],
    "torch_arch_list": [],
    "triton_version": None,
    "triton_compiles": False,
    "triton_error": None,
    "probe_error": None,
}


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

    probed = dict(NOT_PROBED, mode=None, reason="not probed (probe_torch: false)", limit="not_probed")
    if probe_torch and facts["python_found"]:
        # The service gets TRITON_LIBCUDA_PATH on WSL2; the probe must see the same.
        extra = {"TRITON_LIBCUDA_PATH": facts["triton_libcuda_path"]} if facts["triton_libcuda_path"] else {}
        probed.update(_probe_torch(python, probe_timeout, extra))
    facts.update({key: probed.get(key) for key in NOT_PROBED})
    facts["recommended_moshi_mode"] = probed["mode"]
    facts["recommended_moshi_mode_reason"] = probed["reason"]
    facts["recommended_moshi_mode_limit"] = probed["limit"]
    return facts


def _probe_torch(python: str, timeout: float, extra_env: dict) -> dict:
    """`python -m myca_ops.voice.model probe`: the facts and the mode, or why there are none."""
    rc, out, err = _run(["env", *("%s=%s" % kv for kv in extra_env.items()), python, *MODEL_PROBE], timeout)
    lines = out.strip().splitlines()
    if rc == 0 and lines:
        try:
            return json.loads(lines[-1])
        except ValueError:
            pass
    said = (err or out).strip()
    if "No module named myca_ops" in said or "No module named 'myca_ops'" in said:
        why = "%s has no myca_ops (the moshi role installs it into Moshi's venv)" % python
    else:
        why = "the probe failed (exit %s): %s" % (rc, said[-500:])
    return {"probe_error": why, "reason": "not probed: " + why}
