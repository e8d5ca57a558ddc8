"""The suite's test accounts: a daemon run as the service user is really unprivileged (no root's DAC override)."""

from __future__ import annotations

import subprocess
import sys

from ..conftest import run_cli


def test_service_account_cannot_read_a_0600_file_of_another_user(open_tmp, service_account, recorder_account):
    secret = open_tmp / "recorder-only.mp4"
    secret.write_bytes(b"x")
    secret.chmod(0o600)
    recorder_account.chown(secret)
    done = run_cli("--version", user=service_account)
    assert done.returncode == 0, done.stderr
    probe = subprocess.run([sys.executable, "-c", f"open({str(secret)!r}, 'rb')"], capture_output=True, text=True,
                           **service_account.popen_args())
    assert probe.returncode != 0 and "PermissionError" in probe.stderr
