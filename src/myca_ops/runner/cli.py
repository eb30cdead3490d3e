"""myca-ops: deploy, verify and read the status of an environment, with live progress.

    myca-ops deploy ENV [--check] [-e k=v | -e @file]
    myca-ops verify ENV
    myca-ops status ENV
    myca-ops loadtest ENV [--callers N] [--seconds T] [--from HOST,...]
    myca-ops --version
    (each also takes --limit HOSTS, --tags T,.., --skip-tags T,.., -v, --json, and the passwords:
     -K/--ask-become-pass or --become-password-file F, -J/--ask-vault-pass or --vault-password-file F)

ENV is an inventory under inventory/ (lab, wsl2, cloud, production) or a path to one.
A run's folder (events, stdout, reports) is reports/runs/ENV-TIME; the newest 10 are kept.
"""

from __future__ import annotations

import argparse
import difflib
import getpass
import json
import sys
import threading
from pathlib import Path

from myca_ops.runner import DeployResult, RunnerError, deploy
from myca_ops.runner.tables import plain
from myca_ops.version import tree_version

EXIT_CODES = """exit codes:
  0    ok
  1    bad input (an unknown environment, a missing password file), said on stderr
  2    failed hosts (each failed task is named, with its cause)
  3    a host that must be real-time is not
  4    unreachable hosts (each with the reason)
  5    nothing ran (Ansible's error, or a --limit or --tags that matched nothing, said on stderr)
  64   usage (an unknown option, a malformed argument), said on stderr
  130  cancelled (Ctrl-C)"""
EXIT_USAGE = 64
PLAYBOOKS = {
    "deploy": "site.yml",
    "verify": "playbooks/verify.yml",
    "status": "playbooks/status.yml",
    "loadtest": "playbooks/loadtest.yml",
}
RESULT_EVENTS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "FAILED",
    "runner_on_unreachable": "UNREACHABLE",
    "runner_on_skipped": "skipped",
}


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors on their own exit code (argparse's 2 is "failed hosts" here)."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


class Progress:
    """One line per host with its current task: a live table on a terminal, plain lines otherwise."""

    def __init__(self, stream=sys.stderr, diffs: bool = False, verbose: bool = False) -> None:
        self.stream = stream
        self.diffs = diffs  # --check: print each change's diff as Ansible renders it
        self.verbose = verbose  # -v: Ansible's own output, as it comes
        self.hosts: dict[str, str] = {}
        self.live = None
        if stream.isatty():
            from rich.console import Console
            from rich.live import Live

            self.live = Live(console=Console(file=stream), refresh_per_second=8, transient=False)
            self.live.start()

    def __call__(self, event: dict) -> None:
        data = event.get("event_data", {})
        kind, host, task = event.get("event"), data.get("host"), data.get("task", "")
        if self.verbose:
            if event.get("stdout"):
                self._say(event["stdout"])
            return
        if self.diffs and kind == "runner_on_ok" and data.get("res", {}).get("changed"):
            res = data["res"]  # a loop's diffs are its items'
            text = "\n".join(
                filter(None, map(render_diff, [res.get("diff")] + [r.get("diff") for r in res.get("results") or []]))
            )
            if text:
                self._say(f"{host}: {task}: would change\n{text}")
        if kind == "playbook_on_play_start":
            self._say(f"PLAY {data.get('play', '')}")
        elif kind == "runner_on_start" and host:
            self.hosts[host] = f"{task} ..."
            self._render()
        elif kind in RESULT_EVENTS and host:
            state = "changed" if kind == "runner_on_ok" and data.get("res", {}).get("changed") else RESULT_EVENTS[kind]
            self.hosts[host] = f"{task}: {state}"
            if self.live is None or state in ("FAILED", "UNREACHABLE"):
                msg = data.get("res", {}).get("msg", "") if state in ("FAILED", "UNREACHABLE") else ""
                self._say(f"{host:<14} {task}: {state}{(' - ' + str(msg)) if msg else ''}")
            self._render()

    def _say(self, line: str) -> None:
        if self.live is not None:
            self.live.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self.stream, flush=True)

    def _render(self) -> None:
        if self.live is None:
            return
        from rich.table import Table

        table = Table(show_header=False, box=None)
        for host, state in sorted(self.hosts.items()):
            table.add_row(host, state)
        self.live.update(table)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()


def render_diff(diff) -> str:
    """A task's `diff` result (before/after, or Ansible's prepared text) as a unified diff."""
    parts = diff if isinstance(diff, list) else [diff] if diff else []
    out = []
    for part in parts:
        if part.get("prepared"):
            out.append(part["prepared"].rstrip("\n"))
        elif "before" in part or "after" in part:
            before, after = str(part.get("before", "")), str(part.get("after", ""))
            out += difflib.unified_diff(
                before.splitlines(),
                after.splitlines(),
                part.get("before_header", "before"),
                part.get("after_header", "after"),
                lineterm="",
            )
    return "\n".join(out)


def summary(result: DeployResult) -> str:
    rows = [[host, h.ok, h.changed, h.failed, h.unreachable] for host, h in sorted(result.hosts.items())]
    lines = [plain(["host", "ok", "changed", "failed", "unreachable"], rows, right=(1, 2, 3, 4))]
    for error in result.errors:
        lines.append(f"ansible: {error}")
    for failure in result.failures:
        lines.append(f"failed: {failure}")
    verify = result.verify or {}
    for row in verify.get("gpu_hosts", []):
        verdict = "real-time" if row["realtime"] else "NOT real-time"
        lines.append(
            f"verify {row['host']}: {row['mode']}, carries {row['capacity']} of {row['slots']} conversations "
            f"(tick p99 {row['step_p99_ms']} ms, budget {row['budget_ms']} ms), "
            f"first audio {row['first_audio_ms']} ms, {row['underruns']} underruns, "
            f"persona {row.get('persona') or 'none'}: {verdict}"
        )
    for row in verify.get("bridge_hosts", []):
        lines.append(f"verify {row['host']} (bridge): first audio {row['first_audio_ms']} ms: {row['cause']}")
    for row in verify.get("mas_hosts", []):
        lines.append(
            f"verify {row['host']} (MAS): status {row['status']}, collectors {row['collectors_running']}/{row['collectors']}"
        )
    if result.status_report:
        from myca_ops.runner.status import table as status_table

        lines.append(status_table(result.status_report))
    if result.loadtest:
        from myca_ops.runner.timeline import table

        lines.append(table(result.loadtest))
        lines.append(f"timeline: {result.artifact_dir / 'report' / 'loadtest.png'}")
    lines.append(f"{result.status} (exit {result.exit_code()}); artifacts in {result.artifact_dir}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(
        prog="myca-ops",
        description=__doc__.split("\n\n")[0],
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"myca-ops {tree_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, text in (
        ("deploy", "converge site.yml and verify"),
        ("verify", "measure only"),
        ("status", "the stack's status"),
        ("loadtest", "many callers at once through the bridge"),
    ):
        cmd = sub.add_parser(name, help=text, epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
        cmd.add_argument("env", help="inventory name (lab, wsl2, cloud, production) or path")
        cmd.add_argument("--json", action="store_true", help="print the result as JSON on stdout, no progress")
        cmd.add_argument("--limit", help="only these hosts or groups")
        become = cmd.add_mutually_exclusive_group()
        become.add_argument("-K", "--ask-become-pass", action="store_true", help="ask for the sudo password")
        become.add_argument("--become-password-file", metavar="F", help="the sudo password from a file")
        vault = cmd.add_mutually_exclusive_group()
        vault.add_argument("-J", "--ask-vault-pass", action="store_true", help="ask for the vault password")
        vault.add_argument("--vault-password-file", metavar="F", help="the vault password from a file (or script)")
        cmd.add_argument("--tags", help="comma-separated tags")
        cmd.add_argument("--skip-tags", help="comma-separated tags to leave out")
        cmd.add_argument("-v", "--verbose", action="count", default=0, help="Ansible's own output (-vvv: more)")
        cmd.add_argument(
            "-e", "--extra-vars", action="append", default=[], metavar="K=V|@FILE", help="as ansible-playbook's -e"
        )
        if name == "deploy":
            cmd.add_argument("--check", action="store_true", help="change nothing, show each diff of what would change")
        if name == "loadtest":
            cmd.add_argument("--callers", type=int, help="callers at once (default: the pool's slots)")
            cmd.add_argument("--seconds", type=float, default=10, help="seconds of speech each caller sends")
            cmd.add_argument(
                "--from",
                dest="callers_from",
                metavar="HOST,...",
                help="the hosts that run the callers, each a share (default: the first GPU host)",
            )
    args = parser.parse_args(argv)

    extravars = {}
    if args.command == "loadtest":
        if args.callers is not None and args.callers < 1 or args.seconds <= 0:
            parser.error("--callers must be at least 1 and --seconds positive")
        extravars["loadtest_seconds"] = args.seconds
        if args.callers is not None:
            extravars["loadtest_callers"] = args.callers
        if args.callers_from:
            extravars["loadtest_from"] = [h for h in args.callers_from.split(",") if h]
    for item in args.extra_vars:
        if item.startswith("@") and not Path(item[1:]).is_file():
            print(f"myca-ops: -e {item}: no such file", file=sys.stderr)
            return 1
        if not item.startswith(("@", "{")) and "=" not in item:
            parser.error(f"-e takes K=V, @FILE or JSON, got {item!r}")
    try:
        # Asked before the run starts, so the prompts never mix with its progress lines.
        become_password = getpass.getpass("BECOME password: ") if args.ask_become_pass else None
        vault_password = getpass.getpass("Vault password: ") if args.ask_vault_pass else None
    except (KeyboardInterrupt, EOFError):
        print("\nmyca-ops: cancelled", file=sys.stderr)
        return 130
    progress = None if args.json else Progress(diffs=getattr(args, "check", False), verbose=args.verbose > 0)
    cancel = threading.Event()
    try:
        result = deploy(
            args.env,
            limit=args.limit,
            tags=args.tags.split(",") if args.tags else None,
            skip_tags=args.skip_tags.split(",") if args.skip_tags else None,
            extra_args=[arg for item in args.extra_vars for arg in ("-e", absolute(item))],
            verbosity=args.verbose,
            check=getattr(args, "check", False),
            extravars=extravars,
            on_event=progress,
            playbook=PLAYBOOKS[args.command],
            cancel=cancel,
            vault_password_file=args.vault_password_file,
            vault_password=vault_password,
            become_password=become_password,
            become_password_file=args.become_password_file,
        )
    except RunnerError as exc:
        print(f"myca-ops: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        cancel.set()
        print("myca-ops: cancelled", file=sys.stderr)
        return 130
    finally:
        if progress:
            progress.stop()
    if result.nothing_ran():
        what = [f"--limit {args.limit!r} matched no host"] if args.limit else []
        what += [f"--tags {args.tags!r} matched no task"] if args.tags else []
        # Ansible's own error (a vault that did not open), unless it only says no host matched.
        said = [e for e in result.errors if "no hosts to target" not in e]
        cause = "\n".join(said) or " or ".join(what) or "\n".join(result.errors) or "no host in the inventory"
        print(f"myca-ops: nothing ran: {cause}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(summary(result))
    return result.exit_code()


def absolute(extra_var: str) -> str:
    """-e @FILE with the file's absolute path: ansible-playbook runs in the project's folder."""
    return f"@{Path(extra_var[1:]).resolve()}" if extra_var.startswith("@") else extra_var


if __name__ == "__main__":
    sys.exit(main())
