"""The compile caches across starts (myca_ops.voice.compile_cache): a forced tiny compile through
inductor on CPU stands for a GPU start's kernels, each start in a fresh interpreter as the
service's would be."""

import json
import os
import subprocess
import sys

import pytest

from myca_ops.voice import compile_cache

# A start: prepare the caches for a key, compile a tiny function as moshi's first frames would,
# and say whether inductor found it already compiled.
START = r"""
import json, os, sys
import torch
from torch._dynamo.utils import counters
from myca_ops.voice import compile_cache

env = dict(os.environ)
key = {**compile_cache.key(env, "compile+graphs"), **json.loads(sys.argv[1])}
state, why = compile_cache.prepare(env, key)

@torch.compile(backend="inductor")
def step(x):
    return torch.nn.functional.gelu(x) * 2 + 1

step(torch.ones(8))
print(json.dumps({"state": state, "why": why, "hits": counters["inductor"]["fxgraph_cache_hit"]}))
"""


def start(cache, **key) -> dict:
    env = {
        **os.environ,
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
        "TRITON_CACHE_DIR": str(cache / "triton"),
        "MYCA_MOSHI_DEVICE": "cpu",
        "MYCA_MOSHI_SLOTS": "4",
    }
    run = subprocess.run([sys.executable, "-c", START, json.dumps(key)], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.splitlines()[-1])


@pytest.mark.lab  # torch (the lab's wheelhouse) and a C++ compiler
def test_a_restart_finds_its_kernels_and_a_change_of_what_they_were_made_for_clears_them(tmp_path):
    first = start(tmp_path)
    assert (first["state"], first["hits"]) == ("cold", 0) and first["why"] == "first start with these caches"
    assert any((tmp_path / "inductor").rglob("*.py")), "the compile left nothing in the cache"

    again = start(tmp_path)
    assert again["state"] == "warm" and again["hits"] >= 1, again  # inductor reused the kernel

    upgraded = start(tmp_path, torch="9.9.9")  # as after an upgrade of torch
    assert upgraded["state"] == "cold" and upgraded["hits"] == 0, upgraded
    assert upgraded["why"].startswith("cleared: torch ") and upgraded["why"].endswith("-> 9.9.9")


KEY = {
    "gpu": "NVIDIA H200",
    "torch": "2.9.1",
    "cuda": "12.8",
    "triton": "3.5.0",
    "mode": "compile+graphs",
    "slots": "4",
}


def test_the_caches_are_cleared_only_when_what_they_were_made_for_changes(tmp_path):
    env = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "TRITON_CACHE_DIR": str(tmp_path / "triton")}
    kernel = tmp_path / "triton" / "k" / "kernel.cubin"
    assert compile_cache.prepare(env, KEY) == ("cold", "first start with these caches")
    assert compile_cache.prepare(env, KEY) == ("cold", "nothing compiled yet")  # the start compiled nothing
    kernel.parent.mkdir(parents=True)
    kernel.write_bytes(b"kernel")
    assert compile_cache.prepare(env, KEY) == ("warm", "kernels from an earlier start with the same key")
    for change, why in [
        ({"slots": "8"}, "cleared: slots 4 -> 8"),
        ({"gpu": "NVIDIA H100 80GB HBM3"}, "cleared: gpu NVIDIA H200 -> NVIDIA H100 80GB HBM3"),
        ({"triton": "3.6.0", "mode": "compile"}, "cleared: triton 3.5.0 -> 3.6.0, mode compile+graphs -> compile"),
    ]:
        kernel.parent.mkdir(parents=True, exist_ok=True)
        kernel.write_bytes(b"kernel")
        assert compile_cache.prepare(env, KEY) == ("warm", "kernels from an earlier start with the same key")
        assert compile_cache.prepare(env, {**KEY, **change}) == ("cold", why)
        assert not kernel.exists() and (tmp_path / "triton").is_dir()  # emptied, ready for the new kernels
        compile_cache.prepare(env, KEY)  # back, for the next change


def test_modes_that_compile_nothing_leave_the_caches_alone(tmp_path):
    (tmp_path / "inductor").mkdir()
    (tmp_path / "inductor" / "kernel.py").write_text("# a kernel from a compile+graphs start\n")
    env = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    for mode in ("cpu", "eager", "graphs"):
        assert compile_cache.prepare(env, {**KEY, "mode": mode}) == ("unused", f"mode {mode} compiles nothing")
    assert (tmp_path / "inductor" / "kernel.py").exists()
    assert compile_cache.prepare({}, KEY)[1].startswith("no cache folder set")
