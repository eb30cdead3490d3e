"""myca-moshi: run Moshi in the fastest mode this host supports.

Configured by the environment file the moshi role renders (``MYCA_MOSHI_*``).  It sets
moshi's switches before moshi is imported (``NO_TORCH_COMPILE`` is read at import),
logs one line with the mode and the reason, then runs the server ``MYCA_MOSHI_SERVER``
names: ``batched`` (``myca_ops.voice.server``, many conversations on one model) or
``upstream`` (the real ``moshi.server`` as ``python -m moshi.server`` runs it, or a fork's).  ``myca-moshi fetch`` downloads a Hugging Face
checkpoint into the weights folder; ``myca-moshi wait`` waits for the handshake.  Where no
Ansible facts exist (native Windows), ``myca-moshi serve --auto`` decides the mode itself
(``myca-moshi probe`` prints what it finds).

The weights folder holds ``model.safetensors``, ``mimi.safetensors``, ``tokenizer.model``
and, optionally, ``config.json`` (moshi's LM config; without it the 7B defaults apply).
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import shlex
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from myca_ops.voice.protocol import FRAME_BUDGET_MS

MOSHI_FILE = "model.safetensors"
MIMI_FILE = "mimi.safetensors"
TOKENIZER_FILE = "tokenizer.model"
CONFIG_FILE = "config.json"
MODES = ("compile+graphs", "graphs", "compile", "eager", "cpu")
SERVERS = ("batched", "upstream")
SLOW_MODE_MS = 200  # the field report's step time with graphs and compile off


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class Decision:
    mode: str
    reason: str
    env: dict[str, str] = field(default_factory=dict)  # moshi's switches to set; all others are cleared
    warning: str | None = None


def decide(
    device: str, recommended: str, recommended_reason: str, force_no_cuda_graph: bool, force_no_torch_compile: bool
) -> Decision:
    """The mode for this start.  CUDA graphs need only CUDA; torch.compile needs Triton too."""
    if not device.startswith("cuda"):
        return Decision(
            "cpu", f"device {device}: CUDA graphs and Triton kernels need a CUDA device", {"NO_TORCH_COMPILE": "1"}
        )
    if recommended not in MODES:
        raise ValueError(f"unknown recommended mode {recommended!r}; expected one of {', '.join(MODES)}")
    if recommended == "cpu":
        raise ValueError(
            f"device {device} asked for, but this host's facts say: {recommended_reason}. "
            "Fix the GPU or set moshi_device: cpu"
        )
    compile_ok = recommended == "compile+graphs" and not force_no_torch_compile
    graphs_ok = not force_no_cuda_graph
    env = {}
    if not compile_ok:
        env["NO_TORCH_COMPILE"] = "1"
    if not graphs_ok:
        env["NO_CUDA_GRAPH"] = "1"
    forced = [
        name
        for name, on in (
            ("moshi_force_no_cuda_graph", force_no_cuda_graph),
            ("moshi_force_no_torch_compile", force_no_torch_compile),
        )
        if on
    ]
    if compile_ok and graphs_ok:
        return Decision("compile+graphs", recommended_reason, env)
    if graphs_ok:
        reason = "forced by moshi_force_no_torch_compile" if force_no_torch_compile else recommended_reason
        return Decision(
            "graphs",
            reason,
            env,
            "torch.compile forced off: CUDA graphs alone still fit the frame budget on most GPUs"
            if force_no_torch_compile
            else None,
        )
    mode = "compile" if compile_ok else "eager"
    warning = (
        f"SLOW MODE FORCED ({', '.join(forced)}): CUDA graphs off. Expect about {SLOW_MODE_MS} ms per "
        f"step against a {FRAME_BUDGET_MS:.0f} ms frame budget: buffer underruns and garbled voice"
    )
    return Decision(mode, f"forced by {', '.join(forced)}", env, warning)


# triton-windows releases pair with one torch minor each (its README's table).
TRITON_WINDOWS_FOR_TORCH = {"2.6": "3.2", "2.7": "3.3", "2.8": "3.4", "2.9": "3.5"}

# Run in a fresh interpreter (`myca-moshi probe`): a failed torch.compile must not leave
# inductor's state in the server's process, and moshi must not be imported yet.
PROBE = """
import json, platform
out = {"system": platform.system(), "torch_version": None, "cuda": False, "triton_version": None, "compile_error": None}
import torch
out["torch_version"] = torch.__version__.split("+")[0]
out["cuda"] = bool(torch.cuda.is_available())
try:
    import triton
    out["triton_version"] = triton.__version__
except ImportError:
    pass
if out["cuda"] and out["triton_version"]:
    try:
        assert torch.compile(lambda x: x * 2 + 1)(torch.ones(8, device="cuda")).sum().item() == 24
    except Exception as exc:
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        out["compile_error"] = f"{type(exc).__name__}: {lines[-1] if lines else ''}"
print(json.dumps(out))
"""


def recommend_here(facts: dict) -> tuple[str, str]:
    """The mode `--auto` picks from `myca-moshi probe`'s facts, where no Ansible facts exist (native
    Windows, a container): the compile of a kernel is the whole toolchain check."""
    torch_version = facts.get("torch_version") or "?"
    if not facts.get("cuda"):
        return "cpu", f"torch {torch_version} sees no CUDA device"
    if not facts.get("triton_version"):
        if facts.get("system") == "Windows":
            pin = TRITON_WINDOWS_FOR_TORCH.get(".".join(torch_version.split(".")[:2]))
            if pin:
                major, minor = pin.split(".")
                how = f'pip install "triton-windows>={pin},<{major}.{int(minor) + 1}" (torch {torch_version})'
            else:
                how = f"pip install the triton-windows release made for torch {torch_version}"
        else:
            how = "pip install the triton release your torch names"
        return "graphs", f"CUDA graphs on, torch.compile off: Triton is not installed: {how}"
    if facts.get("compile_error"):
        return "graphs", (
            f"CUDA graphs on, torch.compile off: Triton {facts['triton_version']} cannot compile: {facts['compile_error']}"
        )
    return (
        "compile+graphs",
        f"CUDA and Triton {facts['triton_version']} compile a kernel: torch.compile and CUDA graphs on",
    )


def probe_here(timeout: float = 300) -> dict:
    import subprocess

    try:
        out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ValueError(f"probing torch in {sys.executable} took over {timeout:.0f} s") from None
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise ValueError(f"cannot probe torch in {sys.executable}: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(lines[-1])


def auto_env(env: dict[str, str], facts: dict) -> dict[str, str]:
    """The service's environment with the probed mode (and device, unless set) filled in."""
    mode, reason = recommend_here(facts)
    return {
        "MYCA_MOSHI_DEVICE": "cuda" if facts.get("cuda") else "cpu",
        **env,
        "MYCA_MOSHI_RECOMMENDED_MODE": mode,
        "MYCA_MOSHI_RECOMMENDED_REASON": reason,
    }


def resolve_weights(weights_dir: Path) -> dict[str, Path | None]:
    paths: dict[str, Path | None] = {
        "moshi": weights_dir / MOSHI_FILE,
        "mimi": weights_dir / MIMI_FILE,
        "tokenizer": weights_dir / TOKENIZER_FILE,
    }
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"missing weight file(s): {', '.join(missing)}; re-run the moshi role "
            "(moshi_hf_repo or moshi_weights) to put them there"
        )
    config = weights_dir / CONFIG_FILE
    paths["config"] = config if config.is_file() else None
    if paths["config"] is not None:
        try:
            json.loads(config.read_text())
        except ValueError as exc:
            raise ValueError(f"{config} is not valid JSON ({exc}); fix or remove it") from exc
    return paths


def server_argv(env: dict[str, str], weights: dict[str, Path | None], config_path: Path) -> list[str]:
    argv = [
        "moshi.server",
        "--host",
        env.get("MYCA_MOSHI_HOST", "127.0.0.1"),
        "--port",
        env.get("MYCA_MOSHI_PORT", "8998"),
        "--device",
        env.get("MYCA_MOSHI_DEVICE", "cuda"),
        "--static",
        env.get("MYCA_MOSHI_STATIC") or "none",  # moshi's default downloads a UI from the hub
        "--moshi-weight",
        str(weights["moshi"]),
        "--mimi-weight",
        str(weights["mimi"]),
        "--tokenizer",
        str(weights["tokenizer"]),
        "--config-path",
        str(config_path),
    ]
    if env.get("MYCA_MOSHI_SSL_DIR"):
        argv += ["--ssl", env["MYCA_MOSHI_SSL_DIR"]]
    if _true(env.get("MYCA_MOSHI_HALF")):
        argv.append("--half")
    argv += shlex.split(env.get("MYCA_MOSHI_EXTRA_ARGS", ""))  # the role quotes each argument
    return argv


def decide_from_env(env: dict[str, str]) -> Decision:
    """The decision for the service configured by `env` (the role's environment file).  A
    recommended mode of ``auto`` (a container: the host has no venv to probe) is probed here, as
    ``serve --auto`` does, so the service and a measurement beside it decide alike."""
    if env.get("MYCA_MOSHI_RECOMMENDED_MODE") == "auto":
        env = auto_env(env, probe_here())
    return decide(
        env.get("MYCA_MOSHI_DEVICE", "cuda"),
        env.get("MYCA_MOSHI_RECOMMENDED_MODE", "compile+graphs"),
        env.get("MYCA_MOSHI_RECOMMENDED_REASON", "no reason given"),
        _true(env.get("MYCA_MOSHI_FORCE_GRAPHS_OFF")),
        _true(env.get("MYCA_MOSHI_FORCE_COMPILE_OFF")),
    )


def config_or_default(weights: dict[str, Path | None]) -> Path:
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


def serve(env: dict[str, str]) -> None:
    device = env.get("MYCA_MOSHI_DEVICE", "cuda")
    server = env.get("MYCA_MOSHI_SERVER", "batched")
    if server not in SERVERS:
        raise ValueError(f"MYCA_MOSHI_SERVER is {server!r}; expected one of {', '.join(SERVERS)} (moshi_server)")
    decision = decide_from_env(env)
    weights = resolve_weights(Path(env.get("MYCA_MOSHI_WEIGHTS_DIR", "/var/lib/moshi/weights")))
    config_path = config_or_default(weights)

    # Set before moshi is imported: NO_TORCH_COMPILE is read once, at import.
    for name in ("NO_TORCH_COMPILE", "NO_CUDA_GRAPH"):
        os.environ.pop(name, None)
    os.environ.update(decision.env)
    print(f"myca-moshi: {server} server, mode {decision.mode} on {device} ({decision.reason})", flush=True)
    if decision.warning:
        print(f"myca-moshi: WARNING: {decision.warning}", flush=True)

    threads = int(env.get("MYCA_MOSHI_CPU_THREADS") or 0)
    if threads > 0:  # several services on a CPU host's cores: torch's spinning threads slow each other down
        import torch

        torch.set_num_threads(threads)
    if server == "batched":
        from myca_ops.voice import server as batched

        settings = batched.Settings.from_env(env, decision.mode)
        batched.serve(settings, batched.builder(settings, weights, config_path, _true(env.get("MYCA_MOSHI_HALF"))))
        return
    if not device.startswith("cuda"):
        # moshi 0.2.13's warmup ends with torch.cuda.synchronize(), which raises on CPU torch.
        import torch

        torch.cuda.synchronize = lambda *args, **kwargs: None

    sys.argv = server_argv(env, weights, config_path)
    runpy.run_module("moshi.server", run_name="__main__", alter_sys=True)


def fetch(repo: str, revision: str, dest: Path, token: str | None) -> None:
    """Download a checkpoint from the hub (resumable, progress to the log) under the canonical names."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
    from moshi.models import loaders

    cache = dest.parent / "hf-cache"
    patterns = ["*.json", "*.safetensors", "*.model"]
    try:
        snapshot = Path(
            snapshot_download(repo, revision=revision, cache_dir=cache, token=token or None, allow_patterns=patterns)
        )
    except GatedRepoError as exc:
        raise ValueError(f"{repo} is gated: accept its licence on Hugging Face and set moshi_hf_token") from exc
    except RepositoryNotFoundError as exc:
        raise ValueError(f"no repository {repo} (or no access without moshi_hf_token): check moshi_hf_repo") from exc
    except RevisionNotFoundError as exc:
        raise ValueError(f"{repo} has no revision {revision}: check moshi_hf_revision") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise ValueError(f"download of {repo}@{revision} failed ({exc}); re-run the role to resume") from exc
    config = snapshot / CONFIG_FILE
    raw = json.loads(config.read_text()) if config.is_file() else {}
    names = {
        MOSHI_FILE: raw.get("moshi_name", loaders.MOSHI_NAME),
        MIMI_FILE: raw.get("mimi_name", loaders.MIMI_NAME),
        TOKENIZER_FILE: raw.get("tokenizer_name", loaders.TEXT_TOKENIZER_NAME),
    }
    if config.is_file():
        names[CONFIG_FILE] = CONFIG_FILE
    dest.mkdir(parents=True, exist_ok=True)
    for canonical, name in names.items():
        src = snapshot / name
        if not src.is_file():
            raise FileNotFoundError(f"{repo}@{revision} has no {name}")
        link = dest / canonical
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(src.resolve())
    print(f"myca-moshi: {repo}@{revision} ready in {dest}", flush=True)


def crash_watch(unit: str, limit: int = 3):
    """A check that says why waiting for `unit` is pointless: systemd restarted it `limit`
    times since the watch began (NRestarts only grows, so count from here)."""
    import subprocess

    def restarts() -> int:
        out = subprocess.run(["systemctl", "show", "-p", "NRestarts", "--value", unit], capture_output=True, text=True)
        return int(out.stdout.strip() or 0) if out.returncode == 0 else 0

    base = restarts()

    def check() -> str | None:
        n = restarts() - base
        return f"{unit} crashed and was restarted {n} times (its journal says why)" if n >= limit else None

    return check


def alive(url: str, timeout: float = 5) -> str | None:
    """None when the server at `url` (http[s]://HOST:PORT) is up, else why not: the batched server's
    /healthz must say its model is loaded (503 for slow ticks is still up); moshi.server, which has
    no /healthz, must answer at all.  The container's health check; it takes no session."""
    import ssl
    import urllib.error
    import urllib.request

    context = ssl._create_unverified_context()  # the server's own (self-signed) certificate, on loopback
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=timeout, context=context) as answer:
            body = answer.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None  # moshi.server: it answers
        body = exc.read()
    except (OSError, ValueError) as exc:
        return f"no answer from {url}: {exc}"
    try:
        loaded = json.loads(body).get("model_loaded")
    except (ValueError, AttributeError):
        return f"{url}/healthz answered {body[:80]!r}"
    return None if loaded else "the model is still loading"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="myca-moshi", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    serve_args = sub.add_parser(
        "serve", help="run the Moshi server (the default), configured by MYCA_MOSHI_* variables"
    )
    serve_args.add_argument(
        "--auto", action="store_true", help="decide the mode here (no Ansible facts: native Windows, a container)"
    )
    sub.add_parser("probe", help="print this interpreter's CUDA and Triton facts and the mode --auto would pick")
    f = sub.add_parser("fetch", help="download a checkpoint from Hugging Face into the weights folder")
    f.add_argument("--repo", required=True)
    f.add_argument("--revision", required=True)
    f.add_argument("--dest", type=Path, required=True)
    w = sub.add_parser("wait", help="wait until the server answers the websocket handshake")
    w.add_argument("--url", default="ws://127.0.0.1:8998/api/chat")
    w.add_argument("--timeout", type=float, default=600)
    w.add_argument("--cafile")
    w.add_argument("--insecure", action="store_true", help="do not verify the TLS certificate (self-signed)")
    w.add_argument("--unit", help="give up early when this systemd unit keeps crashing")
    a = sub.add_parser("alive", help="exit 0 when the server is up (a container's health check; takes no session)")
    a.add_argument("--url", default="http://127.0.0.1:8998")
    args = parser.parse_args(argv)
    try:
        if args.command == "alive":
            why = alive(args.url)
            if why:
                print(f"myca-moshi: {why}", file=sys.stderr)
            return 1 if why else 0
        if args.command == "fetch":
            fetch(args.repo, args.revision, args.dest, os.environ.get("HF_TOKEN"))
        elif args.command == "wait":
            from myca_ops.voice.probe import wait_for_handshake

            took = wait_for_handshake(
                args.url,
                args.timeout,
                args.cafile,
                not args.insecure,
                crash_watch(args.unit) if args.unit else (lambda: None),
            )
            print(f"handshake from {args.url} after {took:.1f}s")
        elif args.command == "probe":
            facts = probe_here()
            mode, reason = recommend_here(facts)
            print(json.dumps({**facts, "mode": mode, "reason": reason}))
        else:
            env = dict(os.environ)
            serve(auto_env(env, probe_here()) if getattr(args, "auto", False) else env)
    except (ValueError, FileNotFoundError, TimeoutError) as exc:
        print(f"myca-moshi: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
