"""The thin ``dap``'s decisions without a lab: which calls it may take, what its record
holds, and that any recorded file's change or another environment is a miss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dapfab import thin
from dapfab.config import RunnerConfig
from dapfab.tasks.edge import Call

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def situation(tmp_path, monkeypatch):
    """A private runtime directory, a home and a project two levels down."""
    runtime, home, repo = tmp_path / "run", tmp_path / "home", tmp_path / "ops" / "repo"
    for place in (runtime, home, repo):
        place.mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(repo)
    monkeypatch.setattr(thin, "_armed", None)  # put back after the test
    for name in [n for n in os.environ if n.startswith(("DAP_", "INVOKE_"))]:
        monkeypatch.delenv(name)
    return repo, home


def remembered(argv=("k8s.kubectl", "--", "get", "pods"), persist=60):
    assert thin.try_run(list(argv)) is None  # no record yet: a miss, which arms the full path
    call = Call(RunnerConfig(ssh_host="ops@mgmt.example", vm_name="runner", persist=persist),
                "team-a", None, True)
    thin.remember(call)
    return thin._record(thin.Situation.now())


def test_the_import_of_the_dap_script_loads_no_invoke_fabric_paramiko_or_yaml():
    code = ("import sys; import dapfab.cli; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'invoke', 'fabric', 'paramiko', 'yaml'}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(("argv", "taken"), [
    (["k8s.kubectl", "--", "get", "pods"], True),
    (["k8s.kubectl", "--"], True),
    (["k8s.kubectl", "-n", "x", "--", "get"], False),
    (["-f", "x.yaml", "k8s.kubectl", "--", "get"], False),
    (["--echo", "k8s.kubectl", "--", "get"], False),
    (["k8s.curl", "--", "http://x"], False),
    (["k8s.kubectl", "get"], False),
    ([], False),
])
def test_only_the_exact_shape_k8s_kubectl_dashdash_words_is_thin(argv, taken):
    assert (thin._shape(argv) is not None) is taken


@pytest.mark.parametrize("variable", ["DAPFAB_THIN=0", "DAP_DEBUG=1", "INVOKE_RUNTIME_CONFIG=x"])
def test_a_switch_in_the_environment_takes_the_full_path(monkeypatch, variable):
    name, value = variable.split("=")
    monkeypatch.setenv(name, value)
    assert thin._shape(["k8s.kubectl", "--", "get"]) is None


def test_the_record_holds_what_the_full_path_resolved(situation):
    record = remembered()
    assert record["config"]["vm_name"] == "runner" and record["namespace"] == "team-a"
    assert record["context"] is None and record["laptop_files"] is True


def test_no_record_without_a_keeper_or_for_another_shape(situation):
    assert remembered(persist=0) is None
    assert remembered(argv=("k8s.kubectl", "-n", "x", "--", "get")) is None


def test_the_record_is_private_and_written_whole(situation):
    remembered()
    records = list((Path(os.environ["XDG_RUNTIME_DIR"]) / "dapfab").iterdir())
    assert [p.name.startswith("thin-") for p in records] == [True]
    assert records[0].stat().st_mode & 0o777 == 0o600
    json.loads(records[0].read_text())


@pytest.mark.parametrize("where", ["project", "parent", "home", "tasks"])
def test_a_config_file_that_changes_or_appears_is_a_miss(situation, where):
    repo, home = situation
    (repo / "invoke.yaml").write_text("dap: {}\n")
    assert remembered() is not None
    path = {"project": repo / "invoke.yaml", "parent": repo.parent / "invoke.json",
            "home": home / ".invoke.yml", "tasks": repo / "tasks.py"}[where]
    path.write_text((path.read_text() if path.exists() else "") + "\n")
    assert thin._record(thin.Situation.now()) is None


def test_an_edit_that_keeps_size_and_times_is_a_miss(situation):
    repo, _ = situation
    config = repo / "invoke.yaml"
    config.write_text("dap: {runner: {vm: a}}\n")
    before = config.stat()
    assert remembered() is not None
    config.write_text("dap: {runner: {vm: b}}\n")
    os.utime(config, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert thin._record(thin.Situation.now()) is None


def test_another_directory_or_environment_has_another_record(situation, monkeypatch):
    repo, _ = situation
    assert remembered() is not None
    monkeypatch.setenv("DAP_KUBECTL_NAMESPACE", "other")
    assert thin._record(thin.Situation.now()) is None
    monkeypatch.delenv("DAP_KUBECTL_NAMESPACE")
    (repo / "sub").mkdir()
    monkeypatch.chdir(repo / "sub")
    assert thin._record(thin.Situation.now()) is None


def test_config_files_are_every_candidate_from_the_directory_up(tmp_path):
    files = thin.config_files("/srv/ops/repo", "/home/op")
    assert "/etc/invoke.yaml" in files and "/home/op/.invoke.json" in files
    for place in ("/srv/ops/repo", "/srv/ops", "/srv", "/"):
        assert os.path.join(place, "invoke.yml") in files
        assert os.path.join(place, "tasks.py") in files
