"""The thin ``dap``'s decisions without a lab: which calls it may take, what its record
holds, that any recorded file's change or another environment is a miss, and the pieces it
carries itself instead of importing them (quoting, JSON, the sh part that starts it)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dapfab import thin, thinrecord
from dapfab.config import RunnerConfig
from dapfab.errors import Interrupted, render
from dapfab.tasks.edge import Call

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "dapfab" / "thin.py"


@pytest.fixture
def situation(tmp_path, monkeypatch):
    """A private runtime directory, a home and a project two levels down. The runtime
    directory has a short path: the record names the keeper's socket, and under tmp_path (as
    nobody, in CI's private TMPDIR) that path is longer than a Unix socket takes."""
    runtime = tempfile.mkdtemp(prefix="dapfab-thin-", dir="/tmp")
    home, repo = tmp_path / "home", tmp_path / "ops" / "repo"
    for place in (home, repo):
        place.mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(repo)
    monkeypatch.setattr(thinrecord, "_armed", None)  # put back after the test
    for name in [n for n in os.environ if n.startswith(("DAP_", "INVOKE_"))]:
        monkeypatch.delenv(name)
    yield repo, home
    shutil.rmtree(runtime, ignore_errors=True)


def remembered(argv=("k8s.kubectl", "--", "get", "pods"), persist=60):
    thinrecord.arm(list(argv))
    call = Call(RunnerConfig(ssh_host="ops@mgmt.example", vm_name="runner", persist=persist),
                "team-a", None, True)
    thinrecord.remember(call)
    return thin.read_record(thin.Situation())


def test_the_thin_script_imports_nothing_of_dapfab_nor_what_loads_enum_or_re():
    code = (f"import sys; sys.path.insert(0, {str(SCRIPT.parent)!r}); import thin; "
            "print(' '.join(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                          text=True, check=True)
    loaded = set(done.stdout.split())
    assert "thin" in loaded
    assert not loaded & {"dapfab", "enum", "re", "json", "socket", "signal", "typing",
                         "invoke", "fabric", "paramiko", "yaml"}, sorted(loaded)


def test_the_dapfab_script_loads_no_invoke_fabric_paramiko_or_yaml_before_the_program():
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
    assert (thin.shape(argv) is not None) is taken


@pytest.mark.parametrize(("argv", "url"), [
    (["k8s.curl", "http://web:8080/healthz"], "http://web:8080/healthz"),
    (["k8s.curl", "HTTPS://web/"], "HTTPS://web/"),
    (["k8s.curl", "--json", "http://web/"], None),
    (["k8s.curl", "http://web/", "--no-fail"], None),
    (["k8s.curl", "-X", "POST"], None),
    (["k8s.curl", "--help"], None),
    (["k8s.curl", "web:8080"], None),  # the task's error, said by the full path
    (["k8s.curl"], None),
    (["k8s.kubectl", "http://web/"], None),
])
def test_only_k8s_curl_with_one_http_url_is_a_thin_curl(argv, url):
    assert thin.curl_url(argv) == url
    assert thin.takes(argv) is (url is not None)


@pytest.mark.parametrize("variable", ["DAPFAB_THIN=0", "DAP_DEBUG=1", "INVOKE_RUNTIME_CONFIG=x"])
def test_a_switch_in_the_environment_takes_the_full_path(monkeypatch, variable):
    name, value = variable.split("=")
    monkeypatch.setenv(name, value)
    assert thin.shape(["k8s.kubectl", "--", "get"]) is None
    assert thin.curl_url(["k8s.curl", "http://web/"]) is None


def test_the_record_holds_what_the_full_path_resolved(situation):
    record = remembered()
    assert record["config"]["vm_name"] == "runner" and record["laptop_files"] is True
    assert record["prefix"] == "kubectl --namespace team-a"
    assert record.keys() == thin.RECORD_KEYS
    assert record["socket"].endswith(record["digest"] + ".sock")


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
    assert thin.read_record(thin.Situation()) is None


def test_an_edit_that_keeps_size_and_times_is_a_miss(situation):
    repo, _ = situation
    config = repo / "invoke.yaml"
    config.write_text("dap: {runner: {vm: a}}\n")
    before = config.stat()
    assert remembered() is not None
    config.write_text("dap: {runner: {vm: b}}\n")
    os.utime(config, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert thin.read_record(thin.Situation()) is None


def test_another_directory_or_environment_has_another_record(situation, monkeypatch):
    repo, _ = situation
    assert remembered() is not None
    monkeypatch.setenv("DAP_KUBECTL_NAMESPACE", "other")
    assert thin.read_record(thin.Situation()) is None
    monkeypatch.delenv("DAP_KUBECTL_NAMESPACE")
    (repo / "sub").mkdir()
    monkeypatch.chdir(repo / "sub")
    assert thin.read_record(thin.Situation()) is None


def test_config_files_are_every_candidate_from_the_directory_up(tmp_path):
    files = thin.config_files("/srv/ops/repo", "/home/op")
    assert "/etc/invoke.yaml" in files and "/home/op/.invoke.json" in files
    for place in ("/srv/ops/repo", "/srv/ops", "/srv", "/"):
        assert os.path.join(place, "invoke.yml") in files
        assert os.path.join(place, "tasks.py") in files


@given(st.text())
def test_quote_is_shlex_quote(word):
    assert thin.quote(word) == shlex.quote(word)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=20)


@given(JSON_VALUES)
def test_json_without_the_json_module_is_the_json_module(value):
    assert thin.dumps(value) == json.dumps(value, separators=(",", ":"))
    assert thin.loads(json.dumps(value)) == value


@pytest.mark.parametrize("text", ["", "{", '{"a": 1} x', "NaN", "[1,]"])
def test_what_is_not_json_is_refused(text):
    with pytest.raises(ValueError):
        thin.loads(text)


def test_the_interrupted_lines_are_the_full_paths():
    for signum, code in thin.SIGNAL_EXIT.items():
        line = f"dapfab: laptop: interrupted by {thin.SIGNAL_NAMES[signum]}"
        assert line == render(Interrupted(f"interrupted by {thin.SIGNAL_NAMES[signum]}",
                                          exit_code=code))


RECORD = {"pty_words": ["attach", "debug", "edit", "exec", "run"], "arg_max": 131071,
          "laptop_files": True}


@pytest.mark.parametrize(("words", "doubtful"), [
    (["get", "pods"], False),
    (["apply", "-f", "deploy.yaml"], True),  # the file exists here
    (["apply", "-fdeploy.yaml"], True),
    (["apply", "--filename=deploy.yaml"], True),
    (["create", "secret", "generic", "s", "--from-file=key=deploy.yaml"], True),
    (["apply", "-f", "absent.yaml"], False),  # passes as it is, as the full path does
    (["cp", "web:/etc/hosts", "hosts"], True),
    (["get", "pods", "x" * 131072], True),
])
def test_a_word_that_may_name_a_laptop_file_or_is_too_long_is_a_miss(tmp_path, monkeypatch,
                                                                     words, doubtful):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "deploy.yaml").write_text("kind: List\n")
    assert thin._doubtful(words, RECORD) is doubtful


def test_with_laptop_files_off_a_path_is_no_doubt(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "deploy.yaml").write_text("kind: List\n")
    assert not thin._doubtful(["apply", "-f", "deploy.yaml"], dict(RECORD, laptop_files=False))


def fake_install(tmp_path: Path, shebang: str) -> tuple[Path, Path]:
    """A bin directory as pip leaves it: ``dap`` (this script), ``dapfab`` with the given
    shebang, and a fake interpreter that writes its argv to a file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dap").write_bytes(SCRIPT.read_bytes())
    (bin_dir / "dapfab").write_text(f"{shebang}\nimport sys\n")
    argv_file = tmp_path / "argv"
    python = bin_dir / "python3.11"
    python.write_text(f'#!/bin/sh\nprintf "%s\\000" "$@" > {argv_file}\n')
    for path in (bin_dir / "dap", bin_dir / "dapfab", python):
        path.chmod(0o755)
    return bin_dir, argv_file


def test_the_launcher_starts_the_interpreter_that_pip_named_without_site(tmp_path):
    bin_dir, argv_file = fake_install(tmp_path, f"#!{tmp_path}/bin/python3.11")
    subprocess.run([str(bin_dir / "dap"), "k8s.kubectl", "--", "get", "a b"], check=True)
    argv = argv_file.read_text().split("\0")
    assert argv[:3] == ["-I", "-S", "-c"]
    assert argv[4:8] == [str(bin_dir / "dap"), "k8s.kubectl", "--", "get"]
    assert argv[8] == "a b"


def test_the_launcher_through_a_symlink_finds_its_own_directory(tmp_path):
    bin_dir, argv_file = fake_install(tmp_path, f"#!{tmp_path}/bin/python3.11")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "dap").symlink_to(bin_dir / "dap")
    subprocess.run([str(elsewhere / "dap"), "k8s.kubectl"], check=True)
    assert argv_file.read_text().split("\0")[4] == str(bin_dir / "dap")


@pytest.mark.parametrize("value", [float("inf"), float("nan"), object()])
def test_what_json_cannot_say_is_not_sent(value):
    with pytest.raises((TypeError, ValueError)):
        thin.dumps(value)


def test_the_launchers_code_is_cached_only_in_a_private_keeper_directory(tmp_path):
    runtime = tmp_path / "run"
    (runtime / "dapfab").mkdir(parents=True, mode=0o700)
    runtime.chmod(0o700)
    env = {"XDG_RUNTIME_DIR": str(runtime), "HOME": str(tmp_path), "PATH": os.environ["PATH"],
           "DAPFAB_THIN": "0"}
    boot = SCRIPT.read_text().split("exec \"$py\" -I -S -c '", 1)[1].split("'", 1)[0]
    probe = [sys.executable, "-I", "-S", "-c", boot, str(tmp_path / "probe.py")]
    (tmp_path / "probe.py").write_text("import sys; print(sys.pycache_prefix)\n")
    done = subprocess.run(probe, env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == f"{runtime}/dapfab/pyc"
    assert list((runtime / "dapfab" / "pyc").rglob("*.pyc"))
    (runtime / "dapfab").chmod(0o770)  # another user of the group could plant code here
    done = subprocess.run(probe, env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "None"
    (runtime / "dapfab").chmod(0o700)
    runtime.chmod(0o777)  # a runtime directory another user can write: ~/.cache instead
    done = subprocess.run(probe, env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "None"  # no ~/.cache/dapfab here


def test_the_record_and_pyc_directory_modes(situation):
    remembered()
    where = Path(os.environ["XDG_RUNTIME_DIR"]) / "dapfab"
    assert stat.S_IMODE(where.stat().st_mode) == 0o700
