"""Moshi's model on this host, in one place: its switches, its mode and its loading.

- :func:`probe` (run in the interpreter that will run Moshi) and :func:`recommend` give the
  fastest mode that works here, with a structured ``limit``; :func:`decide` turns that and the
  operator's forces into moshi's switches.  The launcher, ``serve --auto`` and the gpu_facts
  module (through ``python -m myca_ops.voice.model probe``) all use these.
- :func:`load` loads the service's weights with the service's dtype and device, and
  :meth:`Loaded.engine` makes the :class:`~myca_ops.voice.engine.SlotEngine` the batched server
  serves with; the step-latency measurement and the benchmarks time that same engine.

    python -m myca_ops.voice.model probe    # this interpreter's CUDA and Triton, and the mode it gets
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from myca_ops.envvars import number, switch, whole
from myca_ops.voice.protocol import FRAME_BUDGET_MS, FRAME_SAMPLES

MOSHI_FILE = "model.safetensors"
MIMI_FILE = "mimi.safetensors"
TOKENIZER_FILE = "tokenizer.model"
CONFIG_FILE = "config.json"
DEFAULT_WEIGHTS_DIR = "/var/lib/moshi/weights"
MODES = ("compile+graphs", "graphs", "compile", "eager", "cpu")
SLOW_MODE_MS = 200  # the field report's step time with graphs and compile off
MAX_SLOTS_AUTO = 64  # counted from memory, at most this: 64 slots tick in 48.9 ms on an H200 (docs/PERFORMANCE.md)
GPU_HEADROOM = 0.10  # of the GPU's memory kept free when slots are counted from it
# Tiny LM dims for random weights ("small"): fast anywhere, the codebook layout stays the real one.
SMALL_LM = {
    "dim": 256,
    "num_heads": 4,
    "num_layers": 2,
    "depformer_dim": 128,
    "depformer_num_heads": 1,
    "depformer_num_layers": 2,
    "depformer_dim_feedforward": 528,
}

# Whose checkpoint: Kyutai's (moshiko, loaded as its config.json says) or NVIDIA's PersonaPlex
# (the same LM, whose depformer also predicts the caller's codebooks: personaplex_lm).
FLAVOURS = ("kyutai", "personaplex")
OWN_CODEBOOKS = 8  # the model's own audio codebooks, the depformer's steps this project runs


def flavour(env: dict[str, str]) -> str:
    name = env.get("MYCA_MOSHI_FLAVOUR", "") or "kyutai"
    if name not in FLAVOURS:
        raise ValueError(f"MYCA_MOSHI_FLAVOUR is {name!r}; expected one of {', '.join(FLAVOURS)} (moshi_flavour)")
    return name


# --- The mode ----------------------------------------------------------------------------------
# Why a mode is slower than compile+graphs, as data (verdicts branch on it, never on the text).
LIMITS = ("no_cuda", "no_triton", "triton_fails", "forced", "not_probed", "gpu_unsupported")

# triton-windows releases pair with one torch minor each (its README's table).
TRITON_WINDOWS_FOR_TORCH = {"2.6": "3.2", "2.7": "3.3", "2.8": "3.4", "2.9": "3.5"}


@dataclass(frozen=True)
class Recommendation:
    mode: str | None  # None: not probed (no torch in that interpreter yet)
    reason: str
    limit: str | None  # one of LIMITS, None for compile+graphs


def recommend(facts: dict) -> Recommendation:
    """The fastest mode that works, from the probe's facts (:mod:`myca_ops.voice.torch_probe`).  CUDA graphs need only CUDA;
    torch.compile needs Triton, which needs a C compiler and Python.h (its kernel compile proves it)."""
    if not facts.get("torch_version"):
        return Recommendation(None, f"not probed: {facts.get('probe_error') or 'no torch'}", "not_probed")
    if not facts.get("torch_cuda_available"):
        return Recommendation("cpu", f"torch {facts['torch_version']} sees no CUDA device", "no_cuda")
    unsupported = unsupported_gpu(facts)
    if unsupported:
        return Recommendation(None, unsupported, "gpu_unsupported")
    graphs_only = "CUDA graphs on, torch.compile off: "
    if not facts.get("triton_version"):
        return Recommendation("graphs", graphs_only + "Triton is not installed: " + _triton_install(facts), "no_triton")
    if not facts.get("triton_compiles"):
        hints = []
        if not facts.get("c_compiler"):
            hints.append("no C compiler: install gcc")
        if not facts.get("python_headers"):
            hints.append("Python.h missing: install the python3-dev package of that Python")
        hint = f" ({'; '.join(hints)})" if hints else ""
        error = facts.get("triton_error") or "unknown error"
        return Recommendation(
            "graphs", f"{graphs_only}Triton {facts['triton_version']} cannot compile: {error}{hint}", "triton_fails"
        )
    return Recommendation(
        "compile+graphs",
        f"CUDA and Triton {facts['triton_version']} compile a kernel: torch.compile and CUDA graphs on",
        None,
    )


def _sm(arch: str) -> tuple[int, int]:
    """(major, minor) of an architecture: "sm_86" or "compute_90" (the last digit is the minor), or "8.6"."""
    digits = arch.split("_")[-1].replace(".", "")
    return int(digits[:-1]), int(digits[-1])


def arch_supported(capability: str, arch_list: list[str]) -> bool:
    """Whether a torch built for `arch_list` runs kernels on a GPU of `capability` ("12.0"): a cubin
    for the same major version and a minor up to the GPU's, or PTX (compute_XY) up to its version,
    which the driver compiles for it."""
    gpu = _sm(capability)
    cubins = [_sm(a) for a in arch_list if a.startswith("sm_")]
    ptx = [_sm(a) for a in arch_list if a.startswith("compute_")]
    return any(major == gpu[0] and minor <= gpu[1] for major, minor in cubins) or any(p <= gpu for p in ptx)


def unsupported_gpu(facts: dict) -> str | None:
    """Why the probed torch cannot run on the probed GPU (no kernels for its architecture), naming
    the fix; None when it can, or when the probe did not say (an older myca_ops)."""
    arch_list = facts.get("torch_arch_list") or []
    for device in facts.get("torch_devices") or []:
        capability = device.get("capability")
        if arch_list and capability and not arch_supported(capability, arch_list):
            sm = "sm_{}{}".format(*_sm(capability))
            return (
                f"{device['name']} is {sm}; torch {facts['torch_version']} (CUDA {facts.get('torch_cuda_version')}) "
                f"has kernels for {', '.join(arch_list)} only: install a torch built for {sm} (PyPI's CUDA 12.8 "
                "builds of torch 2.7 or later for sm_120) in moshi_torch_package. NVIDIA's own PersonaPlex server "
                "pins torch<2.5, which has none for GPUs newer than sm_90: serve its checkpoint with "
                "moshi_server: batched"
            )
    return None


def _triton_install(facts: dict) -> str:
    torch_version = facts["torch_version"]
    if facts.get("system") != "Windows":
        return "pip install the triton release your torch names"
    pin = TRITON_WINDOWS_FOR_TORCH.get(".".join(torch_version.split(".")[:2]))
    if not pin:
        return f"pip install the triton-windows release made for torch {torch_version}"
    major, minor = pin.split(".")
    return f'pip install "triton-windows>={pin},<{major}.{int(minor) + 1}" (torch {torch_version})'


def probe(python: str = sys.executable, timeout: float = 300, extra_env: dict | None = None) -> dict:
    """:mod:`myca_ops.voice.torch_probe` run by `python` (any interpreter with torch: it imports
    nothing of this package), its caches in a temporary folder (facts never change the host)."""
    with tempfile.TemporaryDirectory(prefix="moshi-probe-") as tmp:
        # A copy, run as a file (triton.jit reads source: no `python -c`) from a folder of its own, so
        # this package's modules (stats, codec, settings...) never shadow a name torch imports.
        script = Path(shutil.copy(Path(__file__).with_name("torch_probe.py"), tmp))
        env = dict(os.environ, TRITON_CACHE_DIR=f"{tmp}/triton", TORCHINDUCTOR_CACHE_DIR=f"{tmp}/inductor")
        env.update(extra_env or {})
        try:
            out = subprocess.run([python, str(script)], capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise ValueError(f"probing torch in {python} took over {timeout:.0f} s") from None
        except OSError as exc:
            raise ValueError(f"cannot run {python}: {exc}") from None
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise ValueError(f"cannot probe torch in {python}: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(lines[-1])


@dataclass
class Decision:
    mode: str
    reason: str
    limit: str | None  # one of LIMITS: why this mode is slower than compile+graphs
    env: dict[str, str] = field(default_factory=dict)  # moshi's switches to set; all others are cleared
    warning: str | None = None


def decide(device: str, recommended: Recommendation, force_graphs_off: bool, force_compile_off: bool) -> Decision:
    """The mode for this start: the recommendation, less what the operator forced off."""
    if not device.startswith("cuda"):
        reason = f"device {device}: CUDA graphs and Triton kernels need a CUDA device"
        return Decision("cpu", reason, "no_cuda", {"NO_TORCH_COMPILE": "1"})
    if recommended.limit == "gpu_unsupported":  # its reason names the torch build to install
        raise ValueError(recommended.reason)
    if recommended.mode not in MODES:
        raise ValueError(f"unknown recommended mode {recommended.mode!r}; expected one of {', '.join(MODES)}")
    if recommended.mode == "cpu":
        raise ValueError(
            f"device {device} asked for, but this host's facts say: {recommended.reason}. "
            "Fix the GPU or set moshi_device: cpu"
        )
    compile_ok = recommended.mode == "compile+graphs" and not force_compile_off
    graphs_ok = not force_graphs_off
    env = {}
    if not compile_ok:
        env["NO_TORCH_COMPILE"] = "1"
    if not graphs_ok:
        env["NO_CUDA_GRAPH"] = "1"
    if compile_ok and graphs_ok:
        return Decision("compile+graphs", recommended.reason, None, env)
    if graphs_ok:
        if recommended.mode == "compile+graphs":  # compile was forced off
            warning = "torch.compile forced off: CUDA graphs alone still fit the frame budget on most GPUs"
            return Decision("graphs", "forced by moshi_force_no_torch_compile", "forced", env, warning)
        return Decision("graphs", recommended.reason, recommended.limit, env)
    forced = ["moshi_force_no_cuda_graph"] + (["moshi_force_no_torch_compile"] if force_compile_off else [])
    warning = (
        f"SLOW MODE FORCED ({', '.join(forced)}): CUDA graphs off. Expect about {SLOW_MODE_MS} ms per "
        f"step against a {FRAME_BUDGET_MS:.0f} ms frame budget: buffer underruns and garbled voice"
    )
    return Decision("compile" if compile_ok else "eager", f"forced by {', '.join(forced)}", "forced", env, warning)


def auto_env(env: dict[str, str], facts: dict) -> dict[str, str]:
    """The service's environment with the probed mode (and device, unless set) filled in."""
    rec = recommend(facts)
    return {
        "MYCA_MOSHI_DEVICE": "cuda" if facts.get("torch_cuda_available") else "cpu",
        **env,
        "MYCA_MOSHI_RECOMMENDED_MODE": rec.mode or "",
        "MYCA_MOSHI_RECOMMENDED_REASON": rec.reason,
        "MYCA_MOSHI_RECOMMENDED_LIMIT": rec.limit or "",
    }


def decide_from_env(env: dict[str, str]) -> Decision:
    """The decision for the service configured by `env` (the role's environment file).  A
    recommended mode of ``auto`` (a container: the host has no venv to probe) is probed here, as
    ``serve --auto`` does, so the service and a measurement beside it decide alike."""
    if env.get("MYCA_MOSHI_RECOMMENDED_MODE") == "auto":
        env = auto_env(env, probe())
    recommended = Recommendation(
        env.get("MYCA_MOSHI_RECOMMENDED_MODE") or "compile+graphs",
        env.get("MYCA_MOSHI_RECOMMENDED_REASON", "no reason given"),
        env.get("MYCA_MOSHI_RECOMMENDED_LIMIT") or None,
    )
    return decide(
        device(env),
        recommended,
        switch(env, "MYCA_MOSHI_FORCE_GRAPHS_OFF"),
        switch(env, "MYCA_MOSHI_FORCE_COMPILE_OFF"),
    )


CPU_SPINCOUNT = "1000"


def set_switches(decision: Decision) -> None:
    """moshi's switches for `decision`, in this process, before moshi is imported (it reads them then)."""
    for name in ("NO_TORCH_COMPILE", "NO_CUDA_GRAPH"):
        os.environ.pop(name, None)
    os.environ.update(decision.env)


def set_cpu_threads(env: dict[str, str]) -> None:
    """torch's CPU threads as the service runs them, in this process, before torch is imported.

    On a CPU device, torch's idle OpenMP threads spin 300,000 rounds between a tick's parallel
    regions by default (libgomp reads GOMP_SPINCOUNT once, when it loads); 1,000 saves a quarter
    of the server's CPU at the same tick p99, while 0 (passive) makes ticks 28 % slower
    (docs/PERFORMANCE.md, "CPU per caller").  ``MYCA_MOSHI_CPU_THREADS``: the thread count."""
    if not device(env).startswith("cuda") and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = CPU_SPINCOUNT
    threads = whole(env, "MYCA_MOSHI_CPU_THREADS", 0)
    if threads > 0:  # several services on a CPU host's cores: torch's spinning threads slow each other down
        import torch

        torch.set_num_threads(threads)


KV_DTYPES = ("model", "int8", "fp8")  # moshi_kv_dtype: myca_ops.voice.kvcache
MIN_CONTEXT_FRAMES = 64  # 5 s: less is no conversation


def cache_settings(env: dict[str, str]) -> tuple[str, int | None]:
    """The attention cache's storage and context (myca_ops.voice.kvcache) from the service's
    environment: (MYCA_MOSHI_KV_DTYPE, MYCA_MOSHI_CONTEXT_FRAMES or None for the checkpoint's)."""
    kv = env.get("MYCA_MOSHI_KV_DTYPE") or "model"
    if kv not in KV_DTYPES:
        raise ValueError(f"MYCA_MOSHI_KV_DTYPE is {kv!r}: expected one of {', '.join(KV_DTYPES)} (moshi_kv_dtype)")
    context = whole(env, "MYCA_MOSHI_CONTEXT_FRAMES", 0, unit="frames")
    if context and context < MIN_CONTEXT_FRAMES:
        raise ValueError(
            f"MYCA_MOSHI_CONTEXT_FRAMES is {context}: at least {MIN_CONTEXT_FRAMES} frames (5 s), or 0 for the "
            "checkpoint's own (moshi_context_frames)"
        )
    return kv, context or None


def memory_budget(env: dict[str, str]) -> int:
    """Bytes of the GPU the service may take (MYCA_MOSHI_MEMORY_BUDGET_GIB; 0: all of it)."""
    return int(number(env, "MYCA_MOSHI_MEMORY_BUDGET_GIB", 0, unit="GiB (0: the whole GPU)") * 2**30)


# --- Weights ------------------------------------------------------------------------------------
def device(env: dict[str, str]) -> str:
    return env.get("MYCA_MOSHI_DEVICE") or "cuda"


def weights_dir(env: dict[str, str]) -> Path:
    return Path(env.get("MYCA_MOSHI_WEIGHTS_DIR") or DEFAULT_WEIGHTS_DIR)


class WeightPaths(TypedDict):
    moshi: Path
    mimi: Path
    tokenizer: Path
    config: Path | None  # config.json, when the checkpoint has one


def resolve_weights(folder: Path) -> WeightPaths:
    paths = WeightPaths(
        moshi=folder / MOSHI_FILE, mimi=folder / MIMI_FILE, tokenizer=folder / TOKENIZER_FILE, config=None
    )
    missing = [str(p) for p in (paths["moshi"], paths["mimi"], paths["tokenizer"]) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"missing weight file(s): {', '.join(missing)}; re-run the moshi role "
            "(moshi_hf_repo or moshi_weights) to put them there"
        )
    config = folder / CONFIG_FILE
    paths["config"] = config if config.is_file() else None
    if paths["config"] is not None:
        try:
            json.loads(config.read_text())
        except ValueError as exc:
            raise ValueError(f"{config} is not valid JSON ({exc}); fix or remove it") from exc
    return paths


def config_or_default(weights: WeightPaths) -> Path:
    """The checkpoint's config.json; for a legacy checkpoint without one, moshi's 7B config
    written to a temporary file (else moshi would ask the hub for config.json)."""
    if weights["config"] is not None:
        return weights["config"]
    fd, name = tempfile.mkstemp(prefix="moshi-config-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(moshi_7b_config(), f)
    return Path(name)


def moshi_7b_config() -> dict:
    """moshi's own LM kwargs for the 7B model. moshi exposes them only as the private
    `loaders._lm_kwargs`: this is the one place that reads it."""
    from moshi.models import loaders

    try:
        return dict(loaders._lm_kwargs)
    except AttributeError:
        import moshi

        raise ValueError(
            f"moshi {getattr(moshi, '__version__', '?')} has no loaders._lm_kwargs (the 7B config): "
            "give the checkpoint's config.json (moshi_weights.config), or use the pinned moshi_version"
        ) from None


def quantized(paths: WeightPaths) -> bool:
    """Kyutai's 8-bit checkpoint (moshiko-pytorch-q8): its config.json says ``quantize``, and
    moshi's loader builds its linear layers as bitsandbytes int8 ones (``moshi.utils.quantize``)."""
    return paths["config"] is not None and bool(json.loads(paths["config"].read_text()).get("quantize"))


def check_8bit(device_name: str, personaplex: bool) -> None:
    """Where 8-bit weights are served, and where they are refused with the reason."""
    if personaplex:
        raise ValueError("the checkpoint is 8-bit (config.json quantize): PersonaPlex's loader takes bf16 weights only")
    if sys.platform == "win32" or not device_name.startswith("cuda"):
        where = "native Windows" if sys.platform == "win32" else f"device {device_name}"
        raise ValueError(
            f"the checkpoint is 8-bit (Kyutai's q8, config.json quantize: bitsandbytes' int8 matmuls), served on a "
            f"CUDA GPU under Linux only, not on {where}: use the bf16 checkpoint there "
            "(moshi_hf_repo: kyutai/moshiko-pytorch-bf16), or a Linux GPU host (WSL2 counts)"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ValueError(
            "the checkpoint is 8-bit (config.json quantize) and bitsandbytes is not installed: moshi installs it "
            "with its dependencies on Linux (moshi_install_without_deps: false), or add it to moshi_requirements"
        ) from None


def keep_scales_float(lm, weights: Path) -> None:
    """moshi 0.2.13's loader casts every floating tensor of the file to the model's dtype, the int8
    layers' scales too, which its QLinear then refuses at the first step ("Expected weight_scb to
    have type float"): they are read again from the file, as float32."""
    from moshi.utils.quantize import QLinear
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as stored:
        names = set(stored.keys())
        for name, module in lm.named_modules():
            if isinstance(module, QLinear):
                key = f"{name}.weight_scb"
                if key not in names:
                    raise ValueError(f"{weights} has no {key}: not an 8-bit checkpoint in Kyutai's format")
                module.weight_scb.data = stored.get_tensor(key).float().to(module.weight_scb.device)


# --- PersonaPlex's checkpoint ---------------------------------------------------------------------
# PersonaPlex is moshiko's LM (the same kwargs) whose depformer has a step per audio codebook of
# both streams (dep_q 16): it also predicts the caller's next codes, which its server then
# replaces by what the caller said. The model's own 8 codebooks come first and the depformer is
# causal over its steps, so running only those 8 samples exactly what PersonaPlex samples for the
# model's voice: the checkpoint is loaded with the caller's steps left out. Its attention weights
# are in moshi's older layout (one matrix, the steps' blocks stacked), which moshi still loads.
STEP_KEY = re.compile(r"^(depformer_in|linears|depformer\.layers\.\d+\.gating)\.(\d+)\.")
STEP_EMB_KEY = re.compile(r"^depformer_emb\.(\d+)\.")  # one per step after the first
STACKED_KEY = re.compile(r"^depformer\.layers\.\d+\.self_attn\.(in_proj_weight|out_proj\.weight)$")


def depformer_steps(state: dict) -> int:
    return 1 + max(
        (int(m.group(2)) for key in state if (m := STEP_KEY.match(key)) and m.group(1) == "linears"), default=-1
    )


def own_stream(state: dict, keep: int = OWN_CODEBOOKS) -> dict:
    """The checkpoint's tensors for a depformer of its first `keep` steps."""
    steps = depformer_steps(state)
    if steps < keep:
        raise ValueError(
            f"the checkpoint's depformer has {steps} steps, fewer than the model's {keep} audio codebooks: "
            "is it a Moshi or PersonaPlex checkpoint? (moshi_flavour, moshi_hf_repo)"
        )
    kept = {}
    for key, tensor in state.items():
        step = STEP_KEY.match(key)
        emb = STEP_EMB_KEY.match(key)
        if (step and int(step.group(2)) >= keep) or (emb and int(emb.group(1)) >= keep - 1):
            continue
        if STACKED_KEY.match(key):
            tensor = tensor.reshape(steps, -1, *tensor.shape[1:])[:keep].reshape(-1, *tensor.shape[1:])
        kept[key] = tensor
    return kept


def personaplex_lm(paths: WeightPaths, device_name: str, dtype):
    """PersonaPlex's LM with the model's own depformer steps (own_stream). Its kwargs: the
    checkpoint's config.json when that is moshi's kind (has `dim`), else moshiko's 7B, which
    PersonaPlex's own loader hard-codes."""
    from moshi.models import loaders
    from safetensors.torch import load_file

    config = json.loads(paths["config"].read_text()) if paths["config"] is not None else {}
    kwargs = {k: v for k, v in config.items() if not k.endswith("_name") and k not in ("model_type", "lm_gen_config")}
    kwargs = (kwargs if "dim" in kwargs else moshi_7b_config()) | {"dep_q": OWN_CODEBOOKS}
    lm = loaders.get_moshi_lm(None, lm_kwargs=kwargs, device="meta", dtype=dtype)
    state = own_stream(load_file(str(paths["moshi"]), device=device_name))
    lm.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, assign=True)
    return lm.eval()


# --- Loading --------------------------------------------------------------------------------------
def dtype_for(device_name: str, half: bool):
    """bf16 (fp16 with half) on a GPU, as moshi.server; float32 on CPU, where bf16 is slow."""
    import torch

    if not device_name.startswith("cuda"):
        return torch.float32
    return torch.float16 if half else torch.bfloat16


@dataclass
class Loaded:
    """One loaded model: Mimi, the LM and what makes an LMGen for B slots."""

    mimi: Any
    lm: Any
    device: str
    dtype: Any
    gen_config: dict
    model_type: str = "moshi"
    tokenizer: Any = None  # sentencepiece; None for random weights
    budget_bytes: int = 0  # of the GPU this process may take (memory_budget); 0: all of it

    def lm_gen(self, batch: int):
        from moshi.models import LMGen
        from moshi.run_inference import get_condition_tensors

        conditions = get_condition_tensors(self.model_type, self.lm, batch_size=batch, cfg_coef=1.0)
        return LMGen(self.lm, condition_tensors=conditions, **self.gen_config)

    def engine(self, slots: int, prefill_steps: int = 4, replay: bool = False):
        """The batched server's engine with `slots` slots, warmed up (CUDA graphs are captured then);
        `replay`: its prompts may replay a voice's embeddings (Prompts.replays)."""
        from myca_ops.voice.engine import SlotEngine

        engine = SlotEngine(self.mimi, self.lm_gen(slots), slots, self.device, prefill_steps, replay)
        warm_up(engine)
        return engine

    def prompts(self, voices_dir: Path | None = None):
        """What makes persona prompts for this model (the voices in `voices_dir` encoded now, before
        an engine streams Mimi)."""
        from myca_ops.voice.persona import Prompts

        return Prompts(self.mimi, self.tokenizer, self.lm.delays, self.lm.context or 0, voices_dir, self.lm.dim)

    def slot_bytes(self) -> int:
        """GPU memory one slot's streaming state takes (KV caches, codec state), measured."""
        import torch

        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        gen = self.lm_gen(1)
        with self.mimi.streaming(1), gen.streaming(1):
            torch.cuda.synchronize()
            return torch.cuda.memory_allocated() - before

    def slots_for_gpu(self, prompt_steps: int = 0) -> tuple[int, str]:
        """As many slots as the GPU's free memory holds, keeping GPU_HEADROOM of it free and room for
        the personas' kept states (`prompt_steps` positions of a slot's context, all personas)."""
        import torch

        free, total = torch.cuda.mem_get_info(torch.device(self.device))
        if self.budget_bytes:  # a budget is invisible to mem_get_info: what the process holds counts against it
            held = torch.cuda.memory_reserved(torch.device(self.device))
            free, total = min(free, self.budget_bytes - held), min(total, self.budget_bytes)
        per_slot = self.slot_bytes()
        personas = per_slot * prompt_steps // max(self.lm.context or 1, 1)
        slots = max(1, min(MAX_SLOTS_AUTO, int((free - personas - GPU_HEADROOM * total) // max(per_slot, 1))))
        return slots, (
            f"{free / 2**30:.1f} GiB free after loading{' in the budget' if self.budget_bytes else ''}, "
            f"{per_slot / 2**20:.0f} MiB per slot measured, "
            f"{personas / 2**20:.0f} MiB kept for the personas' states"
        )


def load(env: dict[str, str], random_size: str | None = None) -> Loaded:
    """The service's model as the batched server loads it (weights, dtype, device, sampling, the
    attention cache's storage and context), or, with `random_size` or ``MYCA_MOSHI_RANDOM_WEIGHTS``
    ("full": the 7B shapes, "small": a tiny LM; for benchmarks: no text tokenizer, so no text is
    sent), random weights; Mimi is full-size."""
    kv_dtype, context = cache_settings(env)  # refused before the long load
    budget = memory_budget(env)
    if budget and device(env).startswith("cuda"):
        import torch

        gpu = torch.device(device(env))
        # torch then refuses what would pass the budget, as a smaller card would
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget / torch.cuda.mem_get_info(gpu)[1]), gpu)
    loaded = _load(env, random_size)
    loaded.budget_bytes = budget if device(env).startswith("cuda") else 0
    if (kv_dtype, context) != ("model", None):
        from myca_ops.voice import kvcache

        kvcache.shrink(loaded.lm, kv_dtype, context)
    return loaded


def _load(env: dict[str, str], random_size: str | None) -> Loaded:
    import torch
    from moshi.models import loaders

    random_size = random_size or env.get("MYCA_MOSHI_RANDOM_WEIGHTS") or None
    if random_size not in (None, "small", "full"):
        raise ValueError(f"MYCA_MOSHI_RANDOM_WEIGHTS is {random_size!r}: expected small or full (benchmarks only)")

    torch.set_grad_enabled(False)
    where, half = device(env), switch(env, "MYCA_MOSHI_HALF")
    dtype = dtype_for(where, half)
    gen_config: dict = {"support_out_of_sync": True}
    if switch(env, "MYCA_MOSHI_GREEDY"):
        gen_config["use_sampling"] = False
    if random_size:
        overrides = {} if random_size == "full" else dict(SMALL_LM)
        mimi = loaders.get_mimi(None, device=where)
        lm = loaders.get_moshi_lm(None, device=where, dtype=dtype, lm_kwargs_overrides=overrides)
        return Loaded(mimi, lm, where, dtype, gen_config)
    paths = resolve_weights(weights_dir(env))
    if quantized(paths):
        check_8bit(where, flavour(env) == "personaplex")
    if flavour(env) == "personaplex":
        import sentencepiece

        mimi = loaders.get_mimi(str(paths["mimi"]), device=where)
        tokenizer = sentencepiece.SentencePieceProcessor(str(paths["tokenizer"]))
        return Loaded(mimi, personaplex_lm(paths, where, dtype), where, dtype, gen_config, "moshi", tokenizer)
    info = loaders.CheckpointInfo.from_hf_repo(
        "local/unused", paths["moshi"], paths["mimi"], paths["tokenizer"], config_path=config_or_default(paths)
    )
    mimi = info.get_mimi(device=where)
    lm = info.get_moshi(device=where, dtype=dtype)
    if quantized(paths):
        keep_scales_float(lm, paths["moshi"])
    gen_config.update(info.lm_gen_config)
    return Loaded(mimi, lm, where, dtype, gen_config, info.model_type, info.get_text_tokenizer())


def warm_up(engine) -> None:
    """A few frames of silence in every slot (CUDA graphs are captured here), then all reset."""
    import numpy as np

    silence = np.zeros(FRAME_SAMPLES, dtype=np.float32)
    every = range(engine.slots)
    for i in range(4):
        engine.tick(dict.fromkeys(every, silence), set(every) if i == 0 else set())
    engine.reset(list(every))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["probe"]:
        print("usage: python -m myca_ops.voice.model probe", file=sys.stderr)
        return 2
    facts = probe()
    rec = recommend(facts)
    print(json.dumps({**facts, "mode": rec.mode, "reason": rec.reason, "limit": rec.limit}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
