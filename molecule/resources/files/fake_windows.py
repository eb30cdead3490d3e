#!/usr/bin/env python3
"""Windows' programs as WSL's interop runs them, for a lab host with no Windows: cmd.exe,
net.exe, schtasks.exe, netsh.exe, powershell.exe and wsl.exe, each a link to this file. Each
call is appended to calls.log (a JSON line); the Windows side they report and change lives
in state.json beside this file: {"elevated", "task", "portproxy", "firewall", "hyperv"}.
They answer as the real ones do, "access denied" included when the session is not elevated.
"""

import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
STATE = HERE / "state.json"
DRIVES = HERE / "mnt"  # C:\ is mnt/c
NS = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}
DENIED_NETSH = "The requested operation requires elevation (Run as administrator).\n"


def load() -> dict:
    state = json.loads(STATE.read_text()) if STATE.exists() else {}
    for key, empty in (("elevated", False), ("task", None), ("portproxy", {}), ("firewall", {}), ("hyperv", [])):
        state.setdefault(key, empty)
    return state


def save(state: dict) -> None:
    STATE.write_text(json.dumps(state, indent=1))


def linux_path(windows: str) -> Path:
    return DRIVES / windows[0].lower() / windows[3:].replace("\\", "/")


def option(args: list, name: str) -> str:
    return args[[a.lower() for a in args].index(name.lower()) + 1]


def keyvalues(args: list) -> dict:
    return {k.lower(): v for k, _, v in (a.partition("=") for a in args if "=" in a)}


def cmd(args, state):
    env = {"USERPROFILE": "C:\\Users\\lab", "USERDOMAIN": "GPUBOX", "USERNAME": "lab"}
    text = re.sub(r"%(\w+)%", lambda m: env.get(m.group(1), m.group(0)), args[-1])
    print("\r\n".join(part.removeprefix("echo ") for part in text.split("&")), end="\r\n")
    return 0


def net(args, state):
    if state["elevated"]:
        print("There are no entries in the list.")
        return 0
    print("System error 5 has occurred.\n\nAccess is denied.")
    return 2


def schtasks(args, state):
    verb = args[0].lower()
    missing = "ERROR: The system cannot find the file specified."
    if verb == "/query":
        task = state["task"]
        if not task or task["name"] != option(args, "/TN"):
            print(missing, file=sys.stderr)
            return 1
        if "/XML" in args:
            print(task["xml"])
        else:  # /V /FO CSV
            print('"HostName","TaskName","Status","Last Run Time","Last Result"')
            print(f'"GPUBOX","\\{task["name"]}","{task["status"]}","{task["last_run"]}","{task["last_result"]}"')
        return 0
    if verb == "/create":
        raw = linux_path(option(args, "/XML")).read_bytes()
        if not raw.startswith(b"\xff\xfe"):
            print("ERROR: The task XML is malformed. (1,1)::ERROR: incorrect document syntax", file=sys.stderr)
            return 1
        text = raw.decode("utf-16")
        root = ET.fromstring(text.split("?>", 1)[1])
        needs_admin = root.find(".//t:BootTrigger", NS) is not None or (
            root.findtext(".//t:RunLevel", namespaces=NS) == "HighestAvailable"
        )
        if needs_admin and not state["elevated"]:
            print("ERROR: Access is denied.", file=sys.stderr)
            return 1
        name = option(args, "/TN")
        state["task"] = {"name": name, "xml": text, "status": "Ready", "last_run": "N/A", "last_result": "267011"}
        print(f'SUCCESS: The scheduled task "{name}" has successfully been created.')
        return 0
    if verb == "/run":
        state["task"].update(status="Running", last_run="11/29/2026 9:30:00 AM", last_result="267009")
        print(f'SUCCESS: Attempted to run the scheduled task "{option(args, "/TN")}".')
        return 0
    if verb == "/delete":
        if not state["elevated"] and "HighestAvailable" in (state["task"] or {}).get("xml", ""):
            print("ERROR: Access is denied.", file=sys.stderr)
            return 1
        state["task"] = None
        print(f'SUCCESS: The scheduled task "{option(args, "/TN")}" was successfully deleted.')
        return 0
    return 1


def netsh(args, state):
    words = [a.lower() for a in args]
    if words[:2] == ["interface", "portproxy"]:
        if words[2] == "show":
            print("\nListen on ipv4:             Connect to ipv4:\n")
            print("Address         Port        Address         Port")
            print("--------------- ----------  --------------- ----------")
            for port, to in state["portproxy"].items():
                print(f"0.0.0.0         {port:<10}  {to:<15} {port}")
            print()
            return 0
        if not state["elevated"]:
            print(DENIED_NETSH)
            return 1
        kv = keyvalues(args)
        if words[2] == "add":
            state["portproxy"][kv["listenport"]] = kv["connectaddress"]
        else:
            state["portproxy"].pop(kv["listenport"], None)
        print()
        return 0
    if words[:2] == ["advfirewall", "firewall"]:
        kv = keyvalues(args)
        rule = state["firewall"].get(kv["name"])
        if words[2] == "show":
            if not rule:
                print("No rules match the specified criteria.")
                return 1
            print(f"\nRule Name:                            {kv['name']}\n" + "-" * 70)
            print(f"Description:                          {rule['description']}")
            print(
                f"RemoteIP:                             {rule['remoteip']}\nLocalPort:                            {rule['localport']}"
            )
            print("Ok.\n")
            return 0
        if not state["elevated"]:
            print(DENIED_NETSH)
            return 1
        if words[2] == "add":
            state["firewall"][kv["name"]] = {k: kv[k] for k in ("localport", "remoteip", "description", "protocol")}
        else:
            state["firewall"].pop(kv["name"], None)
        print("Ok.\n")
        return 0
    return 1


def powershell(args, state):
    script = args[args.index("-Command") + 1]
    names = re.findall(r"-Name '([^']+)'", script)
    if script.startswith("Get-NetFirewallHyperVRule"):
        pattern = names[0].replace("*", ".*")
        print("\n".join(n for n in state["hyperv"] if re.fullmatch(pattern, n)))
        return 0
    if not state["elevated"]:
        print("Access is denied.", file=sys.stderr)
        return 1
    if "Remove-NetFirewallHyperVRule" in script:
        state["hyperv"] = []
    state["hyperv"] += [n for n in names if "*" not in n]
    return 0


def wsl(args, state):
    return 0


PROGRAMS = {"cmd.exe": cmd, "net.exe": net, "schtasks.exe": schtasks, "netsh.exe": netsh}
PROGRAMS.update({"powershell.exe": powershell, "wsl.exe": wsl})

if __name__ == "__main__":
    program, args = Path(sys.argv[0]).name, sys.argv[1:]
    with (HERE / "calls.log").open("a") as log:
        log.write(json.dumps({"program": program, "args": args}) + "\n")
    state = load()
    rc = PROGRAMS[program](args, state)
    save(state)
    sys.exit(rc)
