# Run a myca_ops command in a service's venv and read the JSON it prints last.  The
# modules stay thin: the logic lives in myca_ops, installed in that venv by the roles.

from __future__ import annotations

import http.client
import json
import os
import socket
import struct


def run_json(
    module, python: str, args: list, timeout: int, env: dict | None = None, container: str | None = None
) -> dict:
    """`container`: run it in that container of the host's Docker engine (the service's own
    image, moshi_runtime: docker), where `python` is the image's venv."""
    argv = ["timeout", str(timeout), python, *args]
    if container:
        rc, out, err = docker_exec(module, container, argv, env or {})
    else:
        if not os.path.exists(python):
            module.fail_json(msg="%s does not exist: converge the role that installs this venv first" % python)
        rc, out, err = module.run_command(argv, environ_update=env or {})
    result = None
    for text in (out, out.strip().splitlines()[-1] if out.strip() else ""):  # whole output, or its last line
        try:
            result = json.loads(text)
            break
        except ValueError:
            continue
    if result is None:
        tail = (err or out).strip().splitlines()[-5:]
        cause = "timed out after %ss" % timeout if rc == 124 else "exit %s" % rc
        module.fail_json(msg="%s -m %s failed (%s): %s" % (python, args[1], cause, " | ".join(tail)), rc=rc)
    return result


DOCKER_SOCKET = "/var/run/docker.sock"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def _docker(module, method: str, path: str, body: dict | None, timeout: float) -> bytes:
    conn = _UnixConnection(DOCKER_SOCKET, timeout)
    try:
        conn.request(method, path, json.dumps(body) if body is not None else None, {"Content-Type": "application/json"})
        answer = conn.getresponse()
        data = answer.read()
    except OSError as exc:
        module.fail_json(msg="cannot reach the Docker engine at %s: %s" % (DOCKER_SOCKET, exc))
    finally:
        conn.close()
    if answer.status >= 400:
        module.fail_json(msg="Docker engine: %s %s answered %s: %s" % (method, path, answer.status, data[:300]))
    return data


def docker_exec(module, container: str, argv: list, env: dict) -> tuple:
    """`docker exec` through the engine's API (the host needs no docker command): (rc, stdout, stderr)."""
    created = _docker(
        module,
        "POST",
        "/containers/%s/exec" % container,
        {"Cmd": argv, "Env": ["%s=%s" % kv for kv in env.items()], "AttachStdout": True, "AttachStderr": True},
        30,
    )
    exec_id = json.loads(created)["Id"]
    stream = _docker(module, "POST", "/exec/%s/start" % exec_id, {"Detach": False, "Tty": False}, None)
    out, err = bytearray(), bytearray()
    while len(stream) >= 8:  # frames: stream (1 stdout, 2 stderr), 3 zero bytes, a 4-byte size, the bytes
        kind, size = stream[0], struct.unpack(">I", stream[4:8])[0]
        (err if kind == 2 else out).extend(stream[8 : 8 + size])
        stream = stream[8 + size :]
    rc = json.loads(_docker(module, "GET", "/exec/%s/json" % exec_id, None, 30))["ExitCode"]
    return rc, out.decode(errors="replace"), err.decode(errors="replace")
