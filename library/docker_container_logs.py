#!/usr/bin/python
# The last lines a container wrote, read through the community.docker collection's client.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: docker_container_logs
short_description: The last lines a container wrote (stdout and stderr), from the host's Docker engine
description:
  - Reads a container's log through the engine's API with the C(community.docker) collection's own client,
    which takes the engine's stream apart frame by frame, so the text comes back whole (no header bytes, none
    lost). The collection has modules for everything else python_service does with containers, not this.
  - Used by python_service to say why a container did not get ready.
options:
  name:
    description: The container's name or ID.
    type: str
    required: true
  tail:
    description: How many of the last lines to read.
    type: int
    default: 30
attributes:
  check_mode:
    support: full
    details: It only reads, in check mode too.
  diff_mode:
    support: none
notes:
  - Talks to the engine where the collection's modules do (C(DOCKER_HOST), else the local socket).
  - A container whose log driver keeps nothing to read back (C(none), C(syslog)) fails with the engine's words.
author: myca-ops
"""

EXAMPLES = r"""
- name: Read why Moshi's container stopped
  docker_container_logs:
    name: moshi
    tail: 50
  register: moshi_log
"""

RETURN = r"""
text:
  description: The lines, stdout and stderr each in the order written (between the two, in the order the engine read them).
  returned: success
  type: str
  sample: "Loading the checkpoint\nRuntimeError: CUDA out of memory\n"
lines:
  description: The same, a list of lines.
  returned: success
  type: list
  elements: str
  sample: ["Loading the checkpoint", "RuntimeError: CUDA out of memory"]
"""

from ansible_collections.community.docker.plugins.module_utils._api.errors import APIError, NotFound
from ansible_collections.community.docker.plugins.module_utils.common_api import AnsibleDockerClient


def main():
    client = AnsibleDockerClient(
        argument_spec=dict(name=dict(type="str", required=True), tail=dict(type="int", default=30)),
        supports_check_mode=True,
    )
    name, tail = client.module.params["name"], client.module.params["tail"]
    try:
        tty = client.get_json("/containers/{0}/json", name)["Config"]["Tty"]
        answer = client._get(client._url("/containers/{0}/logs", name), params={"stdout": 1, "stderr": 1, "tail": tail})
        raw = client._get_result_tty(False, answer, tty)  # the engine's frames joined, in order
    except NotFound:
        client.fail("no container %s on this host's Docker engine" % name)
    except APIError as exc:
        client.fail("the Docker engine cannot give %s's log: %s" % (name, exc))
    text = raw.decode("utf-8", errors="replace")
    client.module.exit_json(changed=False, text=text, lines=text.splitlines())


if __name__ == "__main__":
    main()
