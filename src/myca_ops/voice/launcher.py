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
import dataclasses
import json
import os
import runpy
import shlex
import sys
import time
from pathlib import Path

from myca_ops.envvars import switch
from myca_ops.voice import compile_cache, model

SERVERS = ("batched", "upstream")
# Upstream, NVIDIA's PersonaPlex fork of moshi.server (model.flavour) has no --config-path or
# --half in its parser, takes prompts from the query and voices from --voice-prompt-dir, and asks
# the hub for its repo's config.json at every start (from the cache under HF_HUB_OFFLINE).
VOICES_ARCHIVE = "voices.tgz"


def server_argv(env: dict[str, str], weights: model.WeightPaths, config_path: Path) -> list[str]:
    personaplex = model.flavour(env) == "personaplex"
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
    ]
    if personaplex:
        voices = model.weights_dir(env) / "voices"
        argv += [
            "--voice-prompt-dir",
            str(voices),
            "--hf-repo",
            env.get("MYCA_MOSHI_HF_REPO") or "nvidia/personaplex-7b-v1",
        ]
    else:
        argv += ["--config-path", str(config_path)]
    if env.get("MYCA_MOSHI_SSL_DIR"):
        argv += ["--ssl", env["MYCA_MOSHI_SSL_DIR"]]
    if switch(env, "MYCA_MOSHI_HALF"):
        if personaplex:
            raise ValueError(
                "PersonaPlex's server has no --half: set moshi_half: false with moshi_flavour: personaplex"
            )
        argv.append("--half")
    argv += shlex.split(env.get("MYCA_MOSHI_EXTRA_ARGS", ""))  # the role quotes each argument
    return argv


def serve(env: dict[str, str]) -> None:
    started = time.monotonic()
    device = model.device(env)
    server = env.get("MYCA_MOSHI_SERVER", "batched")
    if server not in SERVERS:
        raise ValueError(f"MYCA_MOSHI_SERVER is {server!r}; expected one of {', '.join(SERVERS)} (moshi_server)")
    decision = model.decide_from_env(env)
    weights = model.resolve_weights(model.weights_dir(env))
    model.set_switches(decision)  # before moshi is imported: NO_TORCH_COMPILE is read once, at import
    print(f"myca-moshi: {server} server, mode {decision.mode} on {device} ({decision.reason})", flush=True)
    if decision.warning:
        print(f"myca-moshi: WARNING: {decision.warning}", flush=True)

    model.set_cpu_threads(env)
    cache = compile_cache.prepare(env, compile_cache.key(env, decision.mode))  # imports torch: after the threads
    print(f"myca-moshi: compile cache: {cache[0]} ({cache[1]})", flush=True)
    if server == "batched":
        from myca_ops.voice import server as batched

        settings = dataclasses.replace(
            batched.Settings.from_env(env, decision.mode), compile_cache=cache, started_at=started
        )
        batched.serve(settings, batched.builder(settings, env))
        return
    if not device.startswith("cuda"):
        # moshi 0.2.13's warmup ends with torch.cuda.synchronize(), which raises on CPU torch.
        import torch

        torch.cuda.synchronize = lambda *args, **kwargs: None

    sys.argv = server_argv(env, weights, model.config_or_default(weights))
    runpy.run_module("moshi.server", run_name="__main__", alter_sys=True)


def fetch(repo: str, revision: str, dest: Path, token: str | None, voices: bool = False) -> None:
    """Download a checkpoint from the hub (resumable, progress to the log) under the canonical names;
    with `voices`, PersonaPlex's voices.tgz too, unpacked into the weights folder's voices/, and the
    revision recorded as the repo's main (its server asks the cache for config.json at main)."""
    # The errors from utils: the huggingface-hub<0.25 of PersonaPlex's own venv has none in its errors module.
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
    from moshi.models import loaders

    cache = dest.parent / "hf-cache"
    patterns = ["*.json", "*.safetensors", "*.model", *([VOICES_ARCHIVE] if voices else [])]
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
    config = snapshot / model.CONFIG_FILE
    raw = json.loads(config.read_text()) if config.is_file() else {}
    names = {
        model.MOSHI_FILE: raw.get("moshi_name", loaders.MOSHI_NAME),
        model.MIMI_FILE: raw.get("mimi_name", loaders.MIMI_NAME),
        model.TOKENIZER_FILE: raw.get("tokenizer_name", loaders.TEXT_TOKENIZER_NAME),
    }
    if config.is_file():
        names[model.CONFIG_FILE] = model.CONFIG_FILE
    dest.mkdir(parents=True, exist_ok=True)
    for canonical, name in names.items():
        src = snapshot / name
        if not src.is_file():
            raise FileNotFoundError(f"{repo}@{revision} has no {name}")
        link = dest / canonical
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(src.resolve())
    if voices:
        unpack_voices(snapshot / VOICES_ARCHIVE, dest / "voices")
        refs = snapshot.parent.parent / "refs"
        refs.mkdir(exist_ok=True)
        (refs / "main").write_text(snapshot.name)
    print(f"myca-moshi: {repo}@{revision} ready in {dest}", flush=True)


def unpack_voices(archive: Path, dest: Path) -> int:
    """PersonaPlex's voices.tgz (a voices/ folder of voice files) into `dest`: regular files only,
    by their base names (a member with a path outside voices/ is refused). Returns the count."""
    import tarfile

    if not archive.is_file():
        raise FileNotFoundError(f"no {archive.name} in the checkpoint: is the repo PersonaPlex's?")
    with tarfile.open(archive, "r:gz") as tar:
        files = []
        for member in tar.getmembers():  # every member checked before anything is written
            parts = Path(member.name).parts
            if member.isdir() and parts == ("voices",):
                continue
            if not member.isfile() or len(parts) != 2 or parts[0] != "voices" or parts[1].startswith("."):
                raise ValueError(f"{archive.name}: {member.name!r} is not a file in voices/; refusing the archive")
            files.append((member, parts[1]))
        dest.mkdir(parents=True, exist_ok=True)
        for member, name in files:
            data = tar.extractfile(member)
            assert data is not None  # a file, checked above
            (dest / name).write_bytes(data.read())
    return len(files)


def crash_watch(unit: str, limit: int = 3):
    """A check that says why waiting for `unit` is pointless: systemd restarted it `limit`
    times since the watch began (NRestarts only grows, so count from here)."""
    import subprocess

    def restarts() -> int:  # 0 where systemd does not run it (a container, supervisord)
        try:
            out = subprocess.run(
                ["systemctl", "show", "-p", "NRestarts", "--value", unit], capture_output=True, text=True
            )
        except FileNotFoundError:
            return 0
        return int(out.stdout.strip() or 0) if out.returncode == 0 else 0

    base = restarts()

    def check() -> str | None:
        n = restarts() - base
        return f"{unit} crashed and was restarted {n} times (its journal says why)" if n >= limit else None

    return check


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
    f.add_argument("--voices", action="store_true", help="also PersonaPlex's voices.tgz, unpacked into voices/")
    w = sub.add_parser("wait", help="wait until the server answers the websocket handshake")
    w.add_argument("--url", default="ws://127.0.0.1:8998/api/chat")
    w.add_argument("--timeout", type=float, default=600)
    w.add_argument("--cafile")
    w.add_argument("--insecure", action="store_true", help="do not verify the TLS certificate (self-signed)")
    w.add_argument("--unit", help="give up early when this systemd unit keeps crashing (none: ignored)")
    w.add_argument(
        "--no-session",
        action="store_true",
        help="wait until the server answers HTTP, opening no session (NVIDIA's own server, whose connections share one generator)",
    )
    a = sub.add_parser(
        "alive", help="print the server's health as JSON, exit 0 when it is up (a container's health check; no session)"
    )
    a.add_argument("--url", default="http://127.0.0.1:8998")
    args = parser.parse_args(argv)
    try:
        if args.command == "alive":
            from myca_ops.voice.health import check

            health = check(args.url)
            print(json.dumps(health))
            return 0 if health["up"] else 1
        if args.command == "fetch":
            fetch(args.repo, args.revision, args.dest, os.environ.get("HF_TOKEN"), args.voices)
        elif args.command == "wait" and args.no_session:
            from myca_ops.voice.health import wait_up

            took = wait_up(args.url, args.timeout, crash_watch(args.unit) if args.unit else (lambda: None))
            print(f"{args.url} answers (no session opened) after {took:.1f}s")
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
            return model.main(["probe"])
        else:
            env = dict(os.environ)
            serve(model.auto_env(env, model.probe()) if getattr(args, "auto", False) else env)
    except (ValueError, FileNotFoundError, TimeoutError) as exc:
        print(f"myca-moshi: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
