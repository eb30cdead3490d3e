# Run a myca_ops command in a service's venv and read the JSON it prints last.  The
# modules stay thin: the logic lives in myca_ops, installed in that venv by the roles.

from __future__ import annotations

import json
import os


def run_json(module, python: str, args: list, timeout: int, env: dict | None = None) -> dict:
    """A service in a container: the module itself runs there (the docker_api connection)."""
    if not os.path.exists(python):
        if module.check_mode:  # a fresh host: the run this check previews makes the venv
            module.exit_json(changed=False, skipped=True, msg="check mode: %s is not there yet" % python)
        module.fail_json(msg="%s does not exist: converge the role that installs this venv first" % python)
    rc, out, err = module.run_command(["timeout", str(timeout), python, *args], environ_update=env or {})
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
