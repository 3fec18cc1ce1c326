#!/usr/bin/python3
"""Ansible module: write a file given inline (base64) on the DUT, creating its directory.

One module run where ``ansible.builtin.copy`` makes three round trips (a remote stat, the
transfer, the copy module): each costs seconds on a slow DUT such as the virtual rack's TCG
guest. Meant for small files (the DUT package, about 130 KB). The logic is a plain function
so the unit tests run it without Ansible.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from typing import Any

DOCUMENTATION = r"""
module: vfio_hil_deploy
short_description: Write a small file given inline (base64) on the DUT
description:
  - Writes the decoded I(content) to I(dest) atomically, creating the parent
    directory (mode 0755) when missing. Leaves an identical file untouched.
options:
  content:
    description: The file's bytes, base64-encoded.
    type: str
    required: true
  dest:
    description: Absolute path of the file on the DUT.
    type: path
    required: true
  mode:
    description: Permission bits of the file (octal string).
    type: str
    default: "0644"
"""

EXAMPLES = r"""
- name: deploy DUT package
  vfio_hil_deploy:
    content: "{{ vfio_hil_dut_package }}"
    dest: /var/lib/vfio-hil/vfio_hil_dut.zip
"""

RETURN = r"""
sha256:
  description: SHA-256 of the file as written.
  returned: success
  type: str
"""


def deploy(dest: str, data: bytes, mode: int = 0o644) -> dict[str, Any]:
    """Make ``dest`` hold ``data`` with ``mode``; return ``{"changed", "sha256"}``."""
    digest = hashlib.sha256(data).hexdigest()
    try:
        with open(dest, "rb") as fh:
            same = hashlib.sha256(fh.read()).hexdigest() == digest
    except FileNotFoundError:
        same = False
    if same and (os.stat(dest).st_mode & 0o7777) == mode:
        return {"changed": False, "sha256": digest}
    directory = os.path.dirname(dest)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".vfio-hil-deploy-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return {"changed": True, "sha256": digest}


def main() -> None:
    """Run as an Ansible module."""
    # Imported here so the unit tests can load this file without Ansible.
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec={
            "content": {"type": "str", "required": True, "no_log": True},
            "dest": {"type": "path", "required": True},
            "mode": {"type": "str", "default": "0644"},
        },
    )
    params = module.params
    try:
        data = base64.b64decode(params["content"], validate=True)
        result = deploy(params["dest"], data, int(params["mode"], 8))
    except (ValueError, OSError) as exc:
        module.fail_json(msg=f"cannot deploy {params['dest']}: {exc}")
    module.exit_json(dest=params["dest"], **result)


if __name__ == "__main__":
    main()
