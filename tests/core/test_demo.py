"""The README's demo command runs its three steps against the lab and exits 0."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.lab


def test_lab_demo_shows_kubectl_curl_and_a_forward_round_trip(cli, lab):
    done = cli("lab.demo", "--lab-id", str(lab.lab_id), timeout=240)
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode() + out
    assert "web" in out and "Running" in out
    assert '"method": "GET"' in out
    assert "(runner)" in out and "(laptop)" in out
    assert '{"status": 200}' in out
    assert "exited with 130" in out
