"""Laptop paths in kubectl's file arguments (docs/design.md §15), on the lab's real sshd,
launcher, tar and kubectl: the files are read from the laptop, shipped in the framed stream
to a tmpfs of the call's own, and leave nothing in the VM however the call ends.

The laptop's files live under pytest's tmp_path (/tmp/...): the runner has a /tmp of its own
on both backends, so a path that worked without shipping would not exist there.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dapfab.laptopfiles import VM_DIR
from dapfab.testing.waiting import wait_until

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
UNICODE = "café-ünïcode-配置.yaml"
SECRET = "s3cr3t-token-for-the-laptop-files-test"
PLUGINS = {
    # Prints its arguments, then the sha256 of every file under each one that exists.
    "kubectl-lf_read": "#!/bin/bash\nprintf 'arg %s\\n' \"$@\"\n"
    "for a; do v=${a#*=}; v=${v#*=}; [ -e \"$v\" ] && find \"$v\" -type f -exec sha256sum {} +; done; true\n",
    # Reads the secret it was given, says so, and stays until stopped.
    # The rest of its stdin, after the bundle.
    "kubectl-lf_stdin": "#!/bin/bash\ncat\n",
    "kubectl-lf_hold": "#!/bin/bash\nf=${1#*=}; f=${f#*=}\nsha256sum \"$f\"\necho ready\nexec sleep 60\n",
}


def configmap(name: str, value: str) -> str:
    return (f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n"
            f"data:\n  value: {json.dumps(value)}\n")


@pytest.fixture
def plugins(runner_config):
    from dapfab.testing.kubectl_plugins import install_kubectl_plugins

    install_kubectl_plugins(runner_config, PLUGINS)


@pytest.fixture
def deploy(tmp_path) -> Path:
    """A manifest directory with a unicode file name and a 5 MiB manifest."""
    folder = tmp_path / "deploy"
    folder.mkdir()
    (folder / UNICODE).write_text(configmap("small", "ünï"), encoding="utf-8")
    big = base64.b64encode(os.urandom(4 << 20)).decode()[: 5 << 20]
    (folder / "big.yaml").write_text(configmap("big", big))
    return folder


def sha_lines(out: str) -> dict[str, str]:
    """basename -> sha256 from the plugin's `sha256sum` lines."""
    return {Path(line.split(None, 1)[1]).name: line.split()[0]
            for line in out.splitlines() if not line.startswith("arg ")}


def json_documents(text: str) -> list[dict]:
    """kubectl -o json prints one document per object."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while text[at:].strip():
        item, end = decoder.raw_decode(text, at + len(text[at:]) - len(text[at:].lstrip()))
        found.append(item)
        at = end
    return found


def laptop_shas(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def files_mounts(lab) -> list[int]:
    """The runner's processes that see a laptop-files tmpfs (calls still holding one)."""
    found = []
    for pid, _ in lab.processes("runner", nested=True):
        try:
            if f" {VM_DIR} tmpfs " in Path(f"/proc/{pid}/mounts").read_text():
                found.append(pid)
        except OSError:
            pass
    return found


def residue(runner_config) -> str:
    """Files in the VM that hold the secret, or anything left in VM_DIR itself."""
    from dapfab.run import run_in_runner

    found = run_in_runner(
        runner_config, f"ls -A {VM_DIR} 2>/dev/null; grep -rlF {SECRET} /tmp /var/tmp /dev/shm "
        f"{VM_DIR} ~ 2>/dev/null; true", hide=True, in_stream=False)
    return found.stdout


def test_a_manifest_directory_is_read_from_the_laptop(cli, lab, plugins, deploy, runner_config):
    """A unicode file name and a 5 MiB manifest: kubectl in the VM reads exactly the
    laptop's bytes, from the call's own directory, directly and through a keeper."""
    for persist in ("0", "30", "30"):  # the second 30 goes through the keeper the first started
        done = cli("k8s.kubectl", "--", "lf_read", "-f", str(deploy), env={"DAP_SSH_PERSIST": persist})
        assert done.returncode == 0, done.stderr
        out = done.stdout.decode()
        assert f"arg {VM_DIR}/0/deploy\n" in out
        assert sha_lines(out) == laptop_shas(deploy)
        if persist == "30":
            wait_until(lab.keepers, timeout=20, what="a keeper")
    lab.stop_keepers()
    # The real kubectl reads them too (client-side, nothing created).
    done = cli("k8s.kubectl", "--", "create", "--dry-run=client", "-o", "json", "-f", str(deploy))
    assert done.returncode == 0, done.stderr
    items = json_documents(done.stdout.decode())
    by_name = {item["metadata"]["name"]: item["data"]["value"] for item in items}
    assert by_name["small"] == "ünï"
    assert by_name["big"] == yaml.safe_load((deploy / "big.yaml").read_text())["data"]["value"]


def test_a_kustomize_directory_and_kubectl_kustomize(cli, tmp_path):
    folder = tmp_path / "overlay"
    folder.mkdir()
    (folder / "kustomization.yaml").write_text("resources:\n- cm.yaml\nnamePrefix: prod-\n")
    (folder / "cm.yaml").write_text(configmap("settings", "from-the-laptop"))
    done = cli("k8s.kubectl", "--", "create", "--dry-run=client", "-o", "json", "-k", str(folder))
    assert done.returncode == 0, done.stderr
    item = json.loads(done.stdout)
    assert (item["metadata"]["name"], item["data"]["value"]) == ("prod-settings", "from-the-laptop")
    done = cli("k8s.kubectl", "--", "kustomize", str(folder))
    assert done.returncode == 0, done.stderr
    assert b"name: prod-settings" in done.stdout


def test_a_secret_file_reaches_kubectl_and_leaves_nothing(cli, lab, tmp_path, runner_config):
    (tmp_path / "secret.txt").write_text(SECRET)
    done = cli(
        "k8s.kubectl", "--", "create", "secret", "generic", "token", "--dry-run=client",
        "-o", "jsonpath={.data.key}", f"--from-file=key={tmp_path / 'secret.txt'}")
    assert done.returncode == 0, done.stderr
    assert base64.b64decode(done.stdout) == SECRET.encode()
    assert files_mounts(lab) == []
    assert residue(runner_config) == ""
    # mgmt only relayed the stream (its /tmp is the laptop's in the lab: its home is not).
    assert lab.run("mgmt", ["grep", "-rlF", SECRET, "/root"]).stdout == ""


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL, signal.SIGSTOP],
                         ids=["ctrl-c", "sigterm", "sigkill", "frozen"])
def test_a_secret_file_is_gone_however_the_call_ends(lab, plugins, tmp_path, runner_config, how):
    """While the call runs its tmpfs holds the secret (seen from the host); after Ctrl-C,
    SIGTERM, a SIGKILL of the laptop process, or a frozen one (the launcher's heartbeat
    watchdog), it is gone with the call within 20 s."""
    (tmp_path / "secret.txt").write_text(SECRET)
    env = {**os.environ, **lab.env(), "DAP_SSH_PERSIST": "0"}
    env.pop("DAP_RUNNER", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "k8s.kubectl", "--", "lf_hold",
         f"--from-file=key={tmp_path / 'secret.txt'}"],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        digest = hashlib.sha256(SECRET.encode()).hexdigest()
        assert proc.stdout.readline().split()[0].decode() == digest
        assert proc.stdout.readline() == b"ready\n"
        assert files_mounts(lab)  # the check sees a live call's files
        proc.send_signal(how)
        if how != signal.SIGSTOP:
            proc.wait(30)
        wait_until(lambda: not files_mounts(lab), timeout=25, what="the call's files gone")
        wait_until(lambda: not lab.running("runner", "sleep 60"), timeout=25, what="the call gone")
    finally:
        proc.kill()
        proc.wait()
    assert residue(runner_config) == ""


def test_cp_both_ways_is_byte_exact(cli, tmp_path):
    sent = tmp_path / "payload.bin"
    sent.write_bytes(os.urandom(700_000))
    remote = f"web:/tmp/dapfab-cp-{os.getpid()}.bin"
    done = cli("k8s.kubectl", "--", "cp", str(sent), remote)
    assert done.returncode == 0, done.stderr
    back = tmp_path / "back" / "copy.bin"
    back.parent.mkdir()
    done = cli("k8s.kubectl", "--", "cp", remote, str(back))
    assert done.returncode == 0, done.stderr
    assert back.read_bytes() == sent.read_bytes()
    assert sorted(p.name for p in back.parent.iterdir()) == ["copy.bin"]  # no staging left
    assert b"dapfab-files" not in done.stdout


def test_paths_that_are_not_the_laptops_pass_unchanged(cli, plugins, tmp_path):
    missing = str(tmp_path / "no-such.yaml")
    done = cli("k8s.kubectl", "--", "lf_read", "-f", missing, "-f", "-", "--filename=https://x.example/a.yaml")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().splitlines() == [
        "arg -f", f"arg {missing}", "arg -f", "arg -", "arg --filename=https://x.example/a.yaml"]


def test_no_laptop_files_flag_and_config_key_turn_it_off_and_dry_shows_it(cli, plugins, deploy):
    for flag, env in ((["--no-laptop-files"], {}), ([], {"DAP_KUBECTL_LAPTOP_FILES": "false"})):
        done = cli("k8s.kubectl", *flag, "--", "lf_read", "-f", str(deploy), env=env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.decode() == f"arg -f\narg {deploy}\n"  # not there in the VM
    done = cli("--dry", "k8s.kubectl", "--", "apply", "-f", str(deploy))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines[0] == f"ship {deploy} -> {VM_DIR}/0/deploy"
    assert lines[1].endswith(f"'kubectl apply -f {VM_DIR}/0/deploy'")


def test_the_python_api_and_fan_out_ship_to_every_runner(runner_config, plugins, deploy, monkeypatch):
    """kubectl_in_runner reads deploy/ relative to the current directory, the caller's
    stdin follows the bundle, a captured cp is cut from stdout; every fan-out runner gets
    the files."""
    import io

    from dapfab.fanout import kubectl_in_runners
    from dapfab.run import kubectl_in_runner

    monkeypatch.chdir(deploy.parent)
    result = kubectl_in_runner(runner_config, ["lf_read", "-f", "deploy/"], hide=True, in_stream=False)
    assert sha_lines(result.stdout) == laptop_shas(deploy)
    result = kubectl_in_runner(runner_config, ["lf_stdin", "-f", "deploy/"], hide=True,
                               in_stream=io.BytesIO(b"the caller's stdin\n"))
    assert result.stdout == "the caller's stdin\n"
    remote = f"web:/tmp/dapfab-api-{os.getpid()}.yaml"
    kubectl_in_runner(runner_config, ["cp", f"deploy/{UNICODE}", remote], hide=True, in_stream=False)
    result = kubectl_in_runner(runner_config, ["cp", remote, "back.yaml"], hide=True, in_stream=False)
    assert b"dapfab-files" not in result.stdout_bytes
    assert (deploy.parent / "back.yaml").read_bytes() == (deploy / UNICODE).read_bytes()
    outcomes = kubectl_in_runners({"one": runner_config, "two": runner_config},
                                  ["lf_read", "-f", "deploy/"], hide=True, in_stream=False)
    for outcome in outcomes.values():
        assert outcome.code == 0 and sha_lines(outcome.result.stdout) == laptop_shas(deploy)
