"""Host keys on every hop: the gateway, the management host, and ssh_config ProxyJump hops.

Every case runs the real CLI against the lab's real sshd; ``ssh-keygen`` and the OpenSSH
client are the judges of what dapfab writes to ``known_hosts``.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import pytest
from trust_helpers import sshd_logins

pytestmark = pytest.mark.lab

ODD_LINES = (
    "# a comment the user wrote\n"
    "@cert-authority *.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKv\n"
    "@revoked * ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKw\n"
    "this line is not a known_hosts entry at all\n"
)


def host_pub(lab, host: str) -> str:
    """``type base64`` of a lab host's key."""
    return " ".join((lab.state_dir / host / "ssh_host_ed25519_key.pub").read_text().split()[:2])


def host_fingerprint(lab, host: str) -> str:
    done = subprocess.run(["ssh-keygen", "-lf", str(lab.state_dir / host / "ssh_host_ed25519_key.pub")],
                          capture_output=True, text=True, check=True)
    return done.stdout.split()[1]


def other_key(tmp_path: Path) -> str:
    """``type base64`` of a fresh key that is nobody's host key."""
    path = tmp_path / "impostor"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return " ".join(Path(f"{path}.pub").read_text().split()[:2])


def known_hosts(tmp_path: Path, lines: dict[str, str], extra: str = "") -> Path:
    """A known_hosts file with ``name -> "type base64"`` entries (after ``extra`` lines)."""
    path = tmp_path / "known_hosts"
    path.write_text(extra + "".join(f"{name} {key}\n" for name, key in lines.items()))
    return path


def found_by_ssh_keygen(path: Path, name: str) -> str:
    done = subprocess.run(["ssh-keygen", "-F", name, "-f", str(path)], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else ""


@pytest.fixture
def both(lab) -> dict[str, str]:
    return {"bastion": lab.address("bastion"), "mgmt": lab.address("mgmt")}


@pytest.mark.parametrize("missing", ["bastion", "mgmt"])
def test_unknown_host_key_on_either_hop_is_refused_naming_that_hop(cli, lab, tmp_path, both, missing):
    present = "mgmt" if missing == "bastion" else "bastion"
    path = known_hosts(tmp_path, {both[present]: host_pub(lab, present)}, extra=ODD_LINES)
    before = path.read_bytes()
    logins = sshd_logins(lab)
    done = cli("k8s.kubectl", "--", "version", env={"DAP_SSH_KNOWN_HOSTS": str(path)})
    assert done.returncode == 255, done.err
    line = done.err.strip()
    assert len(line.splitlines()) == 1
    hop = "gateway" if missing == "bastion" else "management host"
    assert line.startswith(f"dapfab: ssh {hop} {both[missing]}: host key of {both[missing]} is unknown")
    assert f"ssh-ed25519 {host_fingerprint(lab, missing)}" in line
    assert f"ssh-keyscan -t ssh-ed25519 {both[missing]} >> {path}" in line
    assert path.read_bytes() == before
    # Refused before authenticating to the unknown host.
    assert sshd_logins(lab)[missing] == logins[missing]


@pytest.mark.parametrize("changed", ["bastion", "mgmt"])
@pytest.mark.parametrize("policy", ["reject", "accept-new"])
def test_changed_host_key_is_refused_under_either_policy(cli, lab, tmp_path, both, changed, policy):
    keys = {host: host_pub(lab, host) for host in both}
    keys[changed] = other_key(tmp_path)
    path = known_hosts(tmp_path, {both[h]: k for h, k in keys.items()}, extra=ODD_LINES)
    before = path.read_bytes()
    logins = sshd_logins(lab)
    done = cli("k8s.kubectl", "--", "version",
               env={"DAP_SSH_KNOWN_HOSTS": str(path), "DAP_SSH_HOST_KEY_POLICY": policy})
    assert done.returncode == 255, done.err
    hop = "gateway" if changed == "bastion" else "management host"
    line = done.err.strip()
    assert line.startswith(f"dapfab: ssh {hop} {both[changed]}: host key of {both[changed]} has CHANGED")
    assert host_fingerprint(lab, changed) in line
    assert f"ssh-keygen -R '{both[changed]}'" in line
    assert path.read_bytes() == before
    assert sshd_logins(lab)[changed] == logins[changed]


def test_hashed_entries_are_honoured(cli, lab, tmp_path, both, plugins):
    path = known_hosts(tmp_path, {both[h]: host_pub(lab, h) for h in both})
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(path)], check=True, capture_output=True)
    assert all(line.startswith("|1|") for line in path.read_text().splitlines())
    done = cli("k8s.kubectl", "--", "dump-argv", "ok", env={"DAP_SSH_KNOWN_HOSTS": str(path)})
    assert done.returncode == 0, done.err
    assert done.stdout == b"ok\0"


@pytest.mark.parametrize("hash_known_hosts", [False, True])
def test_accept_new_appends_both_hops_in_a_form_openssh_accepts(
    cli, lab, tmp_path, both, plugins, hash_known_hosts
):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    # Debian's /etc/ssh/ssh_config says yes; the user's file (read first) decides here.
    choice = "yes" if hash_known_hosts else "no"
    (home / ".ssh" / "config").write_text(f"Host *\n    HashKnownHosts {choice}\n")
    path = known_hosts(tmp_path, {}, extra=ODD_LINES + "no-newline-at-the-end")
    before = path.read_bytes()
    done = cli("k8s.kubectl", "--", "dump-argv", "in",
               env={"DAP_SSH_KNOWN_HOSTS": str(path), "DAP_SSH_HOST_KEY_POLICY": "accept-new",
                    "HOME": str(home)})
    assert done.returncode == 0, done.err
    assert done.stdout == b"in\0"
    after = path.read_bytes()
    assert after.startswith(before), "the existing lines must stay as they were"
    added = after[len(before):].decode().strip().splitlines()
    assert len(added) == 2
    assert all(line.startswith("|1|") == hash_known_hosts for line in added)
    for host, address in both.items():
        assert host_pub(lab, host).split()[1] in found_by_ssh_keygen(path, address)
    # OpenSSH itself, strict, agrees with what was written: both hops verify.
    config = tmp_path / "ssh_config"
    config.write_text(f"Host *\n    BatchMode yes\n    StrictHostKeyChecking yes\n"
                      f"    UserKnownHostsFile {path}\n    GlobalKnownHostsFile /dev/null\n"
                      f"    IdentityFile {lab.ssh_key}\n    IdentitiesOnly yes\n")
    ssh = subprocess.run(["ssh", "-F", str(config), "-J", lab.gateway, lab.ssh_host, "echo via-ssh"],
                         capture_output=True, text=True, timeout=60)
    assert ssh.returncode == 0, ssh.stderr
    assert ssh.stdout == "via-ssh\n"
    # A second run finds the keys and appends nothing.
    again = cli("k8s.kubectl", "--", "dump-argv", "again",
                env={"DAP_SSH_KNOWN_HOSTS": str(path), "DAP_SSH_HOST_KEY_POLICY": "accept-new",
                     "HOME": str(home)})
    assert again.returncode == 0, again.err
    assert path.read_bytes() == after


@contextlib.contextmanager
def socat_port(lab, port: int):
    """A second port on the bastion (socat to its sshd), so the [host]:port form is exercised."""
    proc = lab.popen("bastion", ["socat", f"TCP-LISTEN:{port},reuseaddr,fork", "TCP:127.0.0.1:22"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while lab.run("bastion", ["ss", "-Htln", f"sport = :{port}"]).stdout.strip() == "":
            assert time.monotonic() < deadline, "socat did not start listening"
            assert proc.poll() is None, "socat exited"
            time.sleep(0.05)
        yield
    finally:
        proc.kill()
        proc.wait()


def test_bracketed_host_port_entries_are_used_and_written(cli, lab, tmp_path, both, plugins):
    gateway = f"{lab.gateway}:2222"
    name = f"[{both['bastion']}]:2222"
    with socat_port(lab, 2222):
        # Listed under [host]:port: accepted. Listed only under the bare host: unknown.
        path = known_hosts(tmp_path, {name: host_pub(lab, "bastion"), both["mgmt"]: host_pub(lab, "mgmt")})
        env = {"DAP_SSH_KNOWN_HOSTS": str(path), "DAP_RUNNER_SSH_GATEWAY": gateway}
        done = cli("k8s.kubectl", "--", "dump-argv", "port", env=env)
        assert done.returncode == 0, done.err
        bare = known_hosts(tmp_path, {both[h]: host_pub(lab, h) for h in both})
        done = cli("k8s.kubectl", "--", "version", env={**env, "DAP_SSH_KNOWN_HOSTS": str(bare)})
        assert done.returncode == 255
        assert f"host key of {name} is unknown" in done.err
        assert f"ssh-keyscan -p 2222 -t ssh-ed25519 {both['bastion']}" in done.err
        # accept-new writes the bracketed form, which ssh-keygen finds.
        done = cli("k8s.kubectl", "--", "dump-argv", "port",
                   env={**env, "DAP_SSH_KNOWN_HOSTS": str(bare), "DAP_SSH_HOST_KEY_POLICY": "accept-new"})
        assert done.returncode == 0, done.err
        assert host_pub(lab, "bastion").split()[1] in found_by_ssh_keygen(bare, name)


def write_proxyjump_config(lab, home: Path, extra: str = "") -> None:
    """~/.ssh/config with aliases: ``labmgmt`` reached with ProxyJump ``labjump``."""
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    (home / ".ssh" / "config").write_text(
        f"Host labjump\n    HostName {lab.address('bastion')}\n    User root\n"
        f"Host labmgmt\n    HostName {lab.address('mgmt')}\n    User root\n    ProxyJump labjump\n"
        f"Host *\n    IdentityFile {lab.ssh_key}\n{extra}"
    )


@pytest.fixture
def proxyjump_env(lab, tmp_path) -> dict[str, str]:
    """CLI environment: ssh_host is an ssh_config alias with ProxyJump, no dap gateway."""
    home = tmp_path / "home"
    write_proxyjump_config(lab, home)
    return {"HOME": str(home), "DAP_RUNNER_SSH_HOST": "labmgmt", "DAP_RUNNER_SSH_GATEWAY": ""}


def test_proxyjump_hop_with_known_keys_works(cli, lab, both, tmp_path, proxyjump_env, plugins):
    path = known_hosts(tmp_path, {both[h]: host_pub(lab, h) for h in both})
    logins = sshd_logins(lab)
    done = cli("k8s.kubectl", "--", "dump-argv", "jump",
               env={**proxyjump_env, "DAP_SSH_KNOWN_HOSTS": str(path)})
    assert done.returncode == 0, done.err
    assert done.stdout == b"jump\0"
    now = sshd_logins(lab)
    assert now["bastion"] > logins["bastion"] and now["mgmt"] > logins["mgmt"]


@pytest.mark.parametrize("fault", ["unknown", "changed"])
def test_proxyjump_hop_key_is_checked(cli, lab, both, tmp_path, proxyjump_env, fault):
    keys = {both["mgmt"]: host_pub(lab, "mgmt")}
    if fault == "changed":
        keys[both["bastion"]] = other_key(tmp_path)
    path = known_hosts(tmp_path, keys)
    before = path.read_bytes()
    logins = sshd_logins(lab)
    done = cli("k8s.kubectl", "--", "version",
               env={**proxyjump_env, "DAP_SSH_KNOWN_HOSTS": str(path)})
    assert done.returncode == 255, done.err
    word = "is unknown" if fault == "unknown" else "has CHANGED"
    assert done.err.startswith(f"dapfab: ssh gateway {both['bastion']}: host key of {both['bastion']} {word}")
    assert host_fingerprint(lab, "bastion") in done.err
    assert path.read_bytes() == before
    assert sshd_logins(lab) == logins


def test_proxyjump_accept_new_hashes_when_ssh_config_says_so(cli, lab, both, tmp_path, plugins):
    home = tmp_path / "home"
    write_proxyjump_config(lab, home, extra="    HashKnownHosts yes\n")
    path = known_hosts(tmp_path, {})
    done = cli("k8s.kubectl", "--", "dump-argv", "jump",
               env={"HOME": str(home), "DAP_RUNNER_SSH_HOST": "labmgmt", "DAP_RUNNER_SSH_GATEWAY": "",
                    "DAP_SSH_KNOWN_HOSTS": str(path), "DAP_SSH_HOST_KEY_POLICY": "accept-new"})
    assert done.returncode == 0, done.err
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and all(line.startswith("|1|") for line in lines)
    for host, address in both.items():
        assert host_pub(lab, host).split()[1] in found_by_ssh_keygen(path, address)


# -- @revoked and @cert-authority, matched as OpenSSH matches them ---------------------------
def openssh_accepts(lab, tmp_path: Path, path: Path) -> bool:
    """Whether OpenSSH's own client connects to mgmt (through bastion) with ``path``."""
    config = tmp_path / "ssh_config"
    config.write_text(Path(lab.ssh_config).read_text().replace(lab.known_hosts, str(path)))
    done = subprocess.run(["ssh", "-F", str(config), "mgmt", "true"], capture_output=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    return done.returncode == 0


def hashed(name: str) -> str:
    import base64
    import hashlib
    import hmac

    salt = b"0123456789abcdefghij"
    mac = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(mac).decode()}"


@pytest.mark.parametrize(
    "pattern,revoked",
    [
        ("*", True),
        ("198.18.*", True),
        ("nothere.example,{mgmt}", True),
        ("!{mgmt},*", False),  # a matching negation excludes the host outright
        ("*,!{mgmt}", False),
        ("{net}.?", True),  # ? is one character: the lab's hosts end in .2
        ("{net}.??", False),
        ("[{mgmt}]:2222", False),  # another port's entry
        ("{hashed}", True),
        ("other.example", False),
    ],
)
def test_a_revoked_mgmt_key_is_refused_as_openssh_refuses_it(
    cli, lab, tmp_path, both, plugins, pattern, revoked
):
    net = both["mgmt"].rsplit(".", 1)[0]
    pattern = pattern.format(mgmt=both["mgmt"], hashed=hashed(both["mgmt"]), net=net)
    path = known_hosts(tmp_path, {both[h]: host_pub(lab, h) for h in both},
                       extra=f"@revoked {pattern} {host_pub(lab, 'mgmt')}\n")
    assert openssh_accepts(lab, tmp_path, path) is not revoked  # OpenSSH is the judge
    done = cli("k8s.kubectl", "--", "dump-argv", "ok", env={"DAP_SSH_KNOWN_HOSTS": str(path)})
    if not revoked:
        assert (done.returncode, done.stdout) == (0, b"ok\0"), done.err
        return
    assert done.returncode == 255
    line = done.err.strip()
    assert len(line.splitlines()) == 1
    assert line.startswith(
        f"dapfab: ssh management host {both['mgmt']}: host key of {both['mgmt']} is REVOKED"
    )


@pytest.mark.parametrize("hop", ["bastion", "mgmt"])
def test_a_revoked_key_is_never_appended_under_accept_new(cli, lab, tmp_path, both, hop):
    keys = {h: host_pub(lab, h) for h in both if h != hop}
    path = known_hosts(tmp_path, {both[h]: k for h, k in keys.items()},
                       extra=f"@revoked * {host_pub(lab, hop)}\n")
    before = path.read_bytes()
    done = cli("k8s.kubectl", "--", "version",
               env={"DAP_SSH_KNOWN_HOSTS": str(path), "DAP_SSH_HOST_KEY_POLICY": "accept-new"})
    assert done.returncode == 255
    label = "gateway" if hop == "bastion" else "management host"
    assert done.err.startswith(f"dapfab: ssh {label} {both[hop]}: host key of {both[hop]} is REVOKED")
    assert path.read_bytes() == before


def test_a_host_under_cert_authority_is_refused_also_under_accept_new(cli, lab, tmp_path, both):
    path = known_hosts(tmp_path, {both["bastion"]: host_pub(lab, "bastion")},
                       extra=f"@cert-authority 198.18.* {other_key(tmp_path)}\n")
    before = path.read_bytes()
    done = cli("k8s.kubectl", "--", "version",
               env={"DAP_SSH_KNOWN_HOSTS": str(path), "DAP_SSH_HOST_KEY_POLICY": "accept-new"})
    assert done.returncode == 255
    line = done.err.strip()
    assert line.startswith(f"dapfab: ssh management host {both['mgmt']}: {both['mgmt']} is covered "
                           "by an @cert-authority line")
    assert "host certificates are not supported" in line
    assert path.read_bytes() == before
