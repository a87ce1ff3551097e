"""``inv config.doctor`` against the lab, healthy and under each fault of the matrix."""

from __future__ import annotations

import contextlib
import re

import pytest
from test_trust_faults import (
    CONNECT_TIMEOUT,
    IN_VM,
    MATRIX,
    run_cli,
)

from dapfab import doctor as d

pytestmark = pytest.mark.lab

# fault -> (the check that fails, the doctor's exit code)
EXPECTED = {
    "mgmt sshd down": (d.MGMT, 255),
    "bastion sshd down": (d.GATEWAY, 255),
    "bastion port closed": (d.GATEWAY, 255),
    "mgmt port closed": (d.MGMT, 255),
    "bastion unreachable (dropped)": (d.GATEWAY, 255),
    "mgmt unreachable (dropped)": (d.MGMT, 255),
    "key file missing": (d.KEY, 2),
    "key path is a directory": (d.KEY, 2),
    "key path is a fifo": (d.KEY, 2),
    "key file unreadable": (d.KEY, 2),
    "key encrypted, no agent": (d.KEY, 2),
    "wrong key": (d.GATEWAY, 255),
    "user not authorized": (d.MGMT, 255),
    "unknown host key": (d.GATEWAY, 255),
    "changed host key": (d.MGMT, 255),
    "incus missing": (d.INCUS, 125),
    "VM not found": (d.VM, 125),
    "VM stopped": (d.VM, 125),
    "kubectl missing": (d.KUBECTL, 127),
    "no kubeconfig": (d.KUBECONFIG, 1),
    "API server down": (d.API, 1),
}
LINE = re.compile(r"(OK|FAIL|SKIP)  +(.+?)(: .*)?$")


def parse(stdout: bytes) -> list[tuple[str, str, str]]:
    """(status, check name, the rest) of every line the doctor printed."""
    rows = []
    for line in stdout.decode().splitlines():
        match = LINE.match(line)
        assert match, f"not a doctor line: {line!r}"
        name = next(n for n in d.ORDER if match.group(2).startswith(n))
        rows.append((match.group(1), name, line))
    return rows


def test_healthy_lab_passes_every_check(lab, clean_lab):
    code, out, err, _ = run_cli(lab, ("config.doctor",), {})
    assert code == 0, out.decode() + err
    rows = parse(out)
    assert [name for _, name, _ in rows] == list(d.ORDER)
    assert all(status == "OK" for status, _, _ in rows), out.decode()
    assert err == ""


def fault_context(name):
    if name in MATRIX:
        return MATRIX[name].inject
    return IN_VM[name][0]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_doctor_names_the_failing_check_and_exits_with_its_hops_code(lab, clean_lab, tmp_path, name):
    failing, code = EXPECTED[name]
    with fault_context(name)(lab, tmp_path) as env:
        prefix = MATRIX[name].prefix if name in MATRIX else ()
        got, out, err, elapsed = run_cli(lab, ("config.doctor",), env or {}, prefix=prefix)
    rows = parse(out)
    text = out.decode() + err
    assert got == code, text
    assert [n for _, n, _ in rows] == list(d.ORDER), "one line per check, in order"
    statuses = {n: s for s, n, _ in rows}
    assert statuses[failing] == "FAIL", text
    first = d.ORDER.index(failing)
    assert all(statuses[n] == "OK" for n in d.ORDER[:first]), text
    fail_line = next(line for s, n, line in rows if n == failing)
    assert "(fix: " in fail_line and fail_line.endswith(")")
    if name in MATRIX and MATRIX[name].says:
        assert MATRIX[name].says[0] in fail_line
    assert "Traceback" not in text
    assert elapsed < CONNECT_TIMEOUT + 10


def test_missing_launcher_tool_is_named(lab, clean_lab):
    with without_tool(lab, "unshare"):
        code, out, err, _ = run_cli(lab, ("config.doctor",), {})
    assert code == 125, out.decode() + err
    rows = {n: line for _, n, line in parse(out)}
    assert rows[d.TOOLS].startswith("FAIL") and "missing in the VM: unshare" in rows[d.TOOLS]


def test_without_socat_doctor_names_it_and_k8s_proxy_says_so(lab, clean_lab):
    with without_tool(lab, "socat"):
        code, out, err, _ = run_cli(lab, ("config.doctor",), {})
        proxy = run_cli(lab, ("k8s.proxy",), {})
    rows = {n: line for _, n, line in parse(out)}
    assert code == 127 and rows[d.SOCAT].startswith("FAIL"), out.decode() + err
    assert "install socat in the VM" in rows[d.SOCAT]
    assert proxy[0] == 127 and "socat is not installed in the VM" in proxy[2], proxy


@contextlib.contextmanager
def without_tool(lab, tool: str):
    lab.run("runner", 'mkdir -p ~/.notool && for f in /usr/bin/*; do '
                      f'[ "${{f##*/}}" = {tool} ] || ln -sf "$f" ~/.notool/; done && '
                      "printf '%s\\n' 'PATH=$HOME/.notool' > ~/.bash_profile", check=True)
    try:
        yield
    finally:
        lab.run("runner", "rm -rf ~/.bash_profile ~/.notool", check=True)


@pytest.mark.parametrize("env, says", [
    ({"DAP_RUNNER_VM": "a;b"}, "invalid VM name 'a;b'"),
    ({"DAP_RUNNER_SSH_HOST": "user@mgmt.example.com"}, "no management host configured"),
    ({"DAP_SSH_HOST_KEY_POLICY": "trust-me"}, "invalid host key policy"),
])
def test_bad_config_fails_the_first_check_with_exit_2(lab, clean_lab, env, says):
    code, out, err, _ = run_cli(lab, ("config.doctor",), env)
    assert code == 2, out.decode() + err
    rows = parse(out)
    assert rows[0][0] == "FAIL" and rows[0][1] == d.CONFIG and says in rows[0][2]
    assert all(status == "SKIP" for status, _, _ in rows[1:])


def test_doctor_checks_the_named_profile(lab, clean_lab, tmp_path):
    config = tmp_path / "invoke.yaml"
    config.write_text("dap:\n  runners:\n    broken:\n      vm: not-there\n")
    code, out, err, _ = run_cli(lab, ("-f", str(config), "config.doctor", "--runner", "broken"),
                                {"DAP_RUNNER_VM": ""})
    assert code == 125, out.decode() + err
    assert "VM not-there not found" in out.decode()
