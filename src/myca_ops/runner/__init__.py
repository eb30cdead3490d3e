"""Run myca-ops from Python: `deploy("lab")` over ansible-runner, with events and a result.

    from myca_ops.runner import deploy
    result = deploy("lab", tags=["bridge"], on_event=print)
    result.rc, result.status, result.hosts["bridge"].changed, result.verify

`env` is an inventory name under the project's `inventory/` or a path to one. Each run's
ansible-runner folder (events, stdout, and the reports under `report/`) is
`reports/runs/ENV-TIME` in the project; the newest KEEP_RUNS are kept.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import ansible_runner

KEEP_RUNS = 10
# ansible-playbook's prompts for --ask-become-pass and --ask-vault-pass, answered by ansible-runner.
BECOME_PROMPT, VAULT_PROMPT = r"BECOME password.*:\s*?$", r"Vault password.*:\s*?$"
EXIT_OK, EXIT_FAILED, EXIT_NOT_REALTIME, EXIT_UNREACHABLE, EXIT_NOTHING_RAN = 0, 2, 3, 4, 5


class RunnerError(ValueError):
    """Bad input (an unknown environment, no project); the message says what to do."""


@dataclass
class HostResult:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0


@dataclass
class DeployResult:
    rc: int
    status: str  # successful, failed, canceled, timeout
    hosts: dict[str, HostResult]
    artifact_dir: Path
    verify: dict | None = None  # the verify report (gpu_hosts, bridge_hosts, mas_hosts rows) when verify ran
    events: int = 0
    failures: list[str] = field(default_factory=list)  # "host: task: message" of each failed or unreachable task
    loadtest: dict | None = None  # the load test (moshi_voice_probe with callers) when one ran
    status_report: dict | None = None  # playbooks/status.yml's rows (services, health, MAS document)
    # Ansible's own ERROR lines: a vault that did not open, a playbook that did not parse.
    errors: list[str] = field(default_factory=list)

    def nothing_ran(self) -> bool:
        """No host ran a task: a --limit that matched no host, or --tags that matched no task."""
        return not any(h.ok + h.changed + h.failed + h.unreachable for h in self.hosts.values())

    @property
    def changed(self) -> int:
        return sum(h.changed for h in self.hosts.values())

    def not_realtime(self) -> list[str]:
        """Hosts that must be real-time (require_realtime) and were measured not to be."""
        rows = (self.verify or {}).get("gpu_hosts", []) + (self.verify or {}).get("bridge_hosts", [])
        return [r["host"] for r in rows if r.get("require_realtime") and not r.get("realtime")]

    def exit_code(self) -> int:
        """0 ok, 2 failed hosts, 3 not real-time, 4 unreachable hosts, 5 nothing ran."""
        if self.nothing_ran():
            return EXIT_NOTHING_RAN
        if any(h.unreachable for h in self.hosts.values()):
            return EXIT_UNREACHABLE
        if self.not_realtime():
            return EXIT_NOT_REALTIME
        if self.rc != 0 or self.status != "successful" or any(h.failed for h in self.hosts.values()):
            return EXIT_FAILED
        return EXIT_OK

    def to_dict(self) -> dict:
        return {
            "rc": self.rc,
            "status": self.status,
            "exit_code": self.exit_code(),
            "changed": self.changed,
            "hosts": {name: vars(h) for name, h in self.hosts.items()},
            "failures": self.failures,
            "errors": self.errors,
            "not_realtime": self.not_realtime(),
            "verify": self.verify,
            "loadtest": self.loadtest,
            "status_report": self.status_report,
            "artifact_dir": str(self.artifact_dir),
        }


def find_project(start: Path | None = None) -> Path:
    """The myca-ops checkout: the folder with site.yml and ansible.cfg, from `start` upwards."""
    for folder in [start or Path.cwd(), *(start or Path.cwd()).parents]:
        if (folder / "site.yml").is_file() and (folder / "ansible.cfg").is_file():
            return folder.resolve()
    raise RunnerError("no myca-ops project here: run from the checkout (the folder with site.yml) or pass project=")


def inventory_path(project: Path, env: str) -> Path:
    path = Path(env) if ("/" in env or Path(env).exists()) else project / "inventory" / env
    if not path.exists():
        known = sorted(p.name for p in (project / "inventory").iterdir() if p.is_dir())
        raise RunnerError(f"no inventory {env!r}: choose one of {', '.join(known)} or give a path")
    return path.resolve()


def new_run_folder(runs: Path, env: str) -> Path:
    """A fresh folder for one run under `runs`; all but the newest KEEP_RUNS older ones removed."""
    runs.mkdir(parents=True, exist_ok=True)
    old = sorted((p for p in runs.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for folder in old[: max(0, len(old) - KEEP_RUNS + 1)]:
        shutil.rmtree(folder, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{env}-{time.strftime('%Y%m%d-%H%M%S')}-", dir=runs))


def deploy(
    env: str,
    limit: str | None = None,
    tags: list[str] | None = None,
    check: bool = False,
    extravars: dict | None = None,
    on_event: Callable[[dict], None] | None = None,
    playbook: str = "site.yml",
    cancel: threading.Event | None = None,
    project: Path | None = None,
    vault_password_file: str | None = None,
    vault_password: str | None = None,
    become_password: str | None = None,
    become_password_file: str | None = None,
    skip_tags: list[str] | None = None,
    extra_args: list[str] | None = None,
    verbosity: int = 0,
) -> DeployResult:
    """Run `playbook` (site.yml) against the inventory `env`; blocks until done or cancelled.

    Passwords given as strings answer ansible-playbook's prompts through ansible-runner: they
    are on no command line and in no file of the run's folder. `extra_args` go to ansible-playbook
    as they are (`-e @vars.yml`, `-e key=value`).
    """
    project = (project or find_project()).resolve()
    inventory = inventory_path(project, env)
    artifacts = new_run_folder(project / "reports" / "runs", Path(env).name)
    cmdline = ["--diff"] + (["--check"] if check else []) + list(extra_args or [])
    passwords = {}
    for path, option in (
        (vault_password_file, "--vault-password-file"),
        (become_password_file, "--become-password-file"),
    ):
        if path:
            if not Path(path).is_file():
                raise RunnerError(f"{option} {path}: no such file")
            cmdline += [option, str(Path(path).resolve())]
    if become_password is not None:
        cmdline.append("--ask-become-pass")
        passwords[BECOME_PROMPT] = become_password
    if vault_password is not None:
        cmdline.append("--ask-vault-pass")
        passwords[VAULT_PROMPT] = vault_password
    failures: list[str] = []
    unreachable: set[str] = set()  # also those a play ignores (status.yml reads past a down host)
    count = 0

    def handle(event: dict) -> bool:
        nonlocal count
        count += 1
        kind, data = event.get("event"), event.get("event_data", {})
        if kind == "runner_on_unreachable":
            unreachable.add(data.get("host"))
        if kind == "runner_on_unreachable" or (kind == "runner_on_failed" and not data.get("ignore_errors")):
            failures.append(f"{data.get('host')}: {data.get('task')}: {cause(data.get('res') or {})}".rstrip(": "))
        if on_event:
            on_event(event)
        return True

    runner = ansible_runner.run(
        private_data_dir=str(artifacts),
        project_dir=str(project),
        playbook=str(project / playbook),
        inventory=str(inventory),
        limit=limit,
        tags=",".join(tags) if tags else None,
        skip_tags=",".join(skip_tags) if skip_tags else None,
        verbosity=verbosity or None,
        extravars={"verify_report_dir": str(artifacts / "report"), **(extravars or {})},
        cmdline=" ".join(shlex.quote(c) for c in cmdline),
        passwords=passwords,
        suppress_env_files=True,  # else ansible-runner writes the passwords into env/ of the run folder
        envvars={
            "ANSIBLE_CONFIG": str(project / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1",
            # ansible-runner turns host key checking off unless told otherwise; keep ansible.cfg's.
            "ANSIBLE_HOST_KEY_CHECKING": "True",
            # this interpreter's ansible-playbook, even when its venv is not activated
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        },
        event_handler=handle,
        cancel_callback=(lambda: cancel.is_set()) if cancel else None,
        quiet=True,
    )
    stats = runner.stats or {}
    hosts: dict[str, HostResult] = {}
    for key, attr in (
        ("ok", "ok"),
        ("changed", "changed"),
        ("failures", "failed"),
        ("dark", "unreachable"),
        ("skipped", "skipped"),
    ):
        for host, n in (stats.get(key) or {}).items():
            setattr(hosts.setdefault(host, HostResult()), attr, n)
    for host in unreachable:
        hosts.setdefault(host, HostResult()).unreachable = max(hosts[host].unreachable, 1)
    reports = {}
    for name in ("verify", "loadtest", "status"):
        report = artifacts / "report" / f"{name}.json"
        reports[name] = json.loads(report.read_text()) if report.exists() else None
    errors = ansible_errors(runner.stdout.read()) if runner.rc != 0 else []
    return DeployResult(
        runner.rc,
        runner.status,
        hosts,
        artifacts,
        reports["verify"],
        count,
        failures,
        reports["loadtest"],
        reports["status"],
        errors,
    )


def cause(res: dict, tail_lines: int = 8) -> str:
    """Why a task failed: Ansible's message, then the last lines of what the command wrote to stderr."""
    msg = str(res.get("msg") or "").strip()
    if res.get("results"):  # a loop: the items that failed
        msg = "; ".join(cause(r, tail_lines) for r in res["results"] if r.get("failed")) or msg
    stderr = (res.get("stderr") or res.get("module_stderr") or "").strip()
    if stderr:
        tail = "\n".join(stderr.splitlines()[-tail_lines:])
        msg = f"{msg}\n    stderr: {tail}" if msg and msg not in tail else tail
    return msg


def ansible_errors(stdout: str) -> list[str]:
    """Ansible's own error lines, with what follows each ("ERROR! Decryption failed", "[ERROR]: ...")."""
    lines = stdout.splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.startswith(("ERROR!", "[ERROR]:")):
            more = [m for m in lines[i + 1 : i + 4] if m.strip() and not m.startswith(("ERROR!", "[ERROR]:", "PLAY"))]
            found.append("\n".join([line, *more]))
    return found
