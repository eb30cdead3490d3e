"""Inductor's and Triton's caches, kept across restarts and cleared when what they were compiled
for changes.

moshi.env points ``TORCHINDUCTOR_CACHE_DIR`` and ``TRITON_CACHE_DIR`` under the service's data
folder (a volume of the host's under the docker runtime), so a restart reuses the kernels the
last start compiled. A compiled kernel is only good for the GPU, torch, Triton, mode and slots
it was made for: those are written beside the caches as ``key.json``, and a start whose key
differs clears both caches first. The launcher calls :func:`prepare` before anything compiles
and says "compile cache: warm" or "cold"; the batched server's ``/healthz`` and ``/metrics``
repeat it with the time the start took. Modes that compile nothing (cpu, eager, graphs: CUDA
graphs are captured anew at each start) leave the caches alone and say "unused".
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

CACHE_VARIABLES = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")
KEY_FILE = "key.json"


def cache_dirs(env: dict[str, str]) -> list[Path]:
    return [Path(env[name]) for name in CACHE_VARIABLES if env.get(name)]


def key(env: dict[str, str], mode: str) -> dict:
    """What a compiled kernel depends on, as this process sees it (torch is imported here)."""
    import torch

    device = env.get("MYCA_MOSHI_DEVICE") or "cuda"
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "gpu": torch.cuda.get_device_name(torch.device(device)) if cuda else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "mode": mode,
        "slots": env.get("MYCA_MOSHI_SLOTS") or "auto",
    }


def prepare(env: dict[str, str], current: dict) -> tuple[str, str]:
    """("warm", "cold" or "unused", why) for a start whose kernels depend on `current`; the caches
    are cleared first when they were made for another key."""
    if "compile" not in current["mode"]:
        return "unused", f"mode {current['mode']} compiles nothing"
    dirs = cache_dirs(env)
    if not dirs:
        return "cold", "no cache folder set (TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR): compiled at every start"
    stamp = dirs[0].parent / KEY_FILE
    try:
        before = json.loads(stamp.read_text())
    except (OSError, ValueError):
        before = None
    if before != current:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
        changed = [f"{k} {before.get(k)} -> {v}" for k, v in current.items() if before.get(k) != v] if before else []
        why = f"cleared: {', '.join(changed)}" if changed else "first start with these caches"
    else:
        held = any(f.is_file() for d in dirs if d.is_dir() for f in d.rglob("*"))
        why = "kernels from an earlier start with the same key" if held else "nothing compiled yet"
        if held:
            return "warm", why
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(current, indent=1) + "\n")
    return "cold", why
