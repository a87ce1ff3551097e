"""RunnerConfig, from_env and the layering of docs/design.md §2 over real Invoke Config objects."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from invoke import Config, Context
from invoke.util import yaml  # the parser Invoke itself reads invoke.yaml with

from dapfab.config import (
    DEFAULTS,
    KEYS,
    PLACEHOLDER_HOST,
    RunnerConfig,
    default_ssh_key,
    kubectl_defaults,
    resolve,
)
from dapfab.errors import ConfigError

NO_ENV: dict[str, str] = {}
FILE_LAYERS = ("system", "user", "project", "runtime")


class Layers:
    """Invoke config files in a temporary tree, loaded the way `inv` loads them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths = {
            "system": root / "etc" / "invoke.yaml",
            "user": root / "home" / ".invoke.yaml",
            "project": root / "project" / "invoke.yaml",
            "runtime": root / "runtime.yaml",
        }
        for path in self.paths.values():
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, layer: str, dap: dict) -> Path:
        path = self.paths[layer]
        path.write_text(yaml.safe_dump({"dap": dap}))
        return path

    def config(self, collection: dict | None = None) -> Config:
        config = Config(
            system_prefix=f"{self.paths['system'].parent}/",
            user_prefix=f"{self.paths['user'].parent}/.",
            project_location=str(self.paths["project"].parent),
            runtime_path=str(self.paths["runtime"]),
        )
        config.load_project()
        config.load_runtime()
        if collection is not None:
            config.load_collection(collection)
        return config


@pytest.fixture
def layers(tmp_path) -> Layers:
    return Layers(tmp_path)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    """A HOME of the test's own, so `~` expansion is predictable and no real file is read."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    for key in KEYS:
        monkeypatch.delenv(key.env, raising=False)
    monkeypatch.delenv("DAP_RUNNER", raising=False)
    return home


# --------------------------------------------------------------------------- from_env


def test_from_env_without_variables_gives_the_defaults_with_expanded_paths(home):
    config = RunnerConfig.from_env(NO_ENV)
    assert config == RunnerConfig(
        ssh_host=PLACEHOLDER_HOST,
        ssh_key=f"{home}/.ssh/id_ed25519",
        vm_name="dap-runner",
        gateway=None,
        incus="incus",
        project=None,
        known_hosts=f"{home}/.ssh/known_hosts",
        host_key_policy="reject",
        connect_timeout=10.0,
    )
    assert config.is_placeholder
    assert config.ssh_key == default_ssh_key()


def test_from_env_reads_every_variable(home):
    config = RunnerConfig.from_env(
        {
            "DAP_RUNNER_SSH_HOST": "ops@mgmt:2222",
            "DAP_RUNNER_SSH_KEY": "~/keys/ops",
            "DAP_RUNNER_VM": "local:runner-2",
            "DAP_RUNNER_SSH_GATEWAY": "jump@bastion",
            "DAP_RUNNER_INCUS": "lxc",
            "DAP_RUNNER_PROJECT": "team-a",
            "DAP_SSH_KNOWN_HOSTS": "~/kh",
            "DAP_SSH_HOST_KEY_POLICY": "accept-new",
            "DAP_SSH_CONNECT_TIMEOUT": "2.5",
            "DAP_SSH_PERSIST": "0",
        }
    )
    assert dataclasses.astuple(config) == (
        "ops@mgmt:2222",
        f"{home}/keys/ops",
        "local:runner-2",
        "jump@bastion",
        "lxc",
        "team-a",
        f"{home}/kh",
        "accept-new",
        2.5,
        0.0,
    )
    assert not config.is_placeholder


def test_from_env_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("DAP_RUNNER_VM", "from-os")
    assert RunnerConfig.from_env().vm_name == "from-os"


def test_from_env_ignores_the_profile_variable():
    assert RunnerConfig.from_env({"DAP_RUNNER": "nope"}).vm_name == "dap-runner"


def test_empty_variables_count_as_unset():
    config = RunnerConfig.from_env({"DAP_RUNNER_VM": "", "DAP_RUNNER_SSH_GATEWAY": ""})
    assert (config.vm_name, config.gateway) == ("dap-runner", None)


def test_a_relative_key_path_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert RunnerConfig.from_env({"DAP_RUNNER_SSH_KEY": "k/id"}).ssh_key == f"{tmp_path}/k/id"


# --------------------------------------------------------------------------- RunnerConfig


def test_runner_config_is_hashable_and_equal_by_value():
    one = RunnerConfig(ssh_host="a@b", vm_name="v", connect_timeout="5")
    two = RunnerConfig(ssh_host="a@b", vm_name="v", connect_timeout=5)
    assert one == two and hash(one) == hash(two)
    assert len({one, two, RunnerConfig(ssh_host="a@c")}) == 2


def test_runner_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunnerConfig().vm_name = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("vm_name", "a;b", "VM name"),
        ("vm_name", "$(x)", "VM name"),
        ("vm_name", "", "VM name"),
        ("vm_name", "x" * 64, "VM name"),
        ("project", "a b", "project name"),
        ("ssh_host", "", "management host"),
        ("ssh_host", "a b", "management host"),
        ("ssh_host", "-oProxyCommand=x", "management host"),
        ("ssh_host", "a@host:0", "port"),
        ("ssh_host", "a@host:70000", "port"),
        ("ssh_host", "a@host:x", "port"),
        ("gateway", "jump\nhost", "gateway"),
        ("incus", "incus; rm", "incus client"),
        ("host_key_policy", "accept", "host key policy"),
        ("connect_timeout", "0", "connect timeout"),
        ("connect_timeout", "-1", "connect timeout"),
        ("connect_timeout", "soon", "connect timeout"),
        ("persist", "-1", "persist time"),
        ("persist", "nan", "persist time"),
        ("connect_timeout", "nan", "connect timeout"),
        ("connect_timeout", True, "connect timeout"),
    ],
)
def test_invalid_fields_are_refused_with_exit_2_and_a_hint(field, value, fragment):
    with pytest.raises(ConfigError) as caught:
        RunnerConfig(**{field: value})
    error = caught.value
    assert error.exit_code == 2
    assert fragment in error.message
    assert error.hint
    assert "\n" not in str(error).replace(repr(value), "")


def test_policy_is_normalised():
    assert RunnerConfig(host_key_policy=" Accept-New ").host_key_policy == "accept-new"


def test_an_empty_key_means_no_key_file():
    assert RunnerConfig(ssh_key="").ssh_key is None
    assert RunnerConfig(ssh_key=None).ssh_key is None


def test_the_placeholder_host_is_refused_by_check_configured():
    with pytest.raises(ConfigError) as caught:
        RunnerConfig().check_configured()
    assert caught.value.exit_code == 2
    assert "config.init" in caught.value.hint
    RunnerConfig(ssh_host="ops@mgmt").check_configured()


# --------------------------------------------------------------------------- layering


def test_without_any_file_every_value_is_the_default(layers):
    settings = resolve(layers.config(), environ=NO_ENV)
    for key in KEYS:
        section, name = key.path.split(".")
        assert settings.value(key.path) == DEFAULTS[section][name]
        assert settings.source(key.path) == "default"


@pytest.mark.parametrize("top", range(len(FILE_LAYERS)))
def test_the_highest_file_layer_that_sets_a_key_wins(layers, top):
    for layer in FILE_LAYERS[: top + 1]:
        layers.write(layer, {"runner": {"vm": f"vm-{layer}"}})
    settings = resolve(layers.config(), environ=NO_ENV)
    winner = FILE_LAYERS[top]
    assert settings.value("runner.vm") == f"vm-{winner}"
    assert settings.source("runner.vm") == str(layers.paths[winner])


def test_a_file_that_sets_one_key_keeps_every_other_default(layers):
    layers.write("project", {"runner": {"vm": "mine"}})
    config = RunnerConfig.from_invoke_config(layers.config(), environ=NO_ENV)
    assert config == dataclasses.replace(RunnerConfig(), vm_name="mine")


def test_keys_from_different_files_combine(layers):
    layers.write("system", {"ssh": {"connect_timeout": 3}})
    layers.write("user", {"runner": {"ssh_key": "~/.ssh/work"}})
    layers.write("project", {"runner": {"ssh_host": "ops@mgmt", "vm": "proj"}})
    layers.write("runtime", {"runner": {"gateway": "jump@bastion"}})
    config = RunnerConfig.from_invoke_config(layers.config(), environ=NO_ENV)
    assert (config.connect_timeout, config.ssh_host, config.vm_name, config.gateway) == (
        3.0,
        "ops@mgmt",
        "proj",
        "jump@bastion",
    )
    assert config.ssh_key.endswith("/home/.ssh/work")


def test_a_collection_that_configures_one_dap_key_keeps_the_other_defaults(layers):
    # Invoke merges collection config shallowly: a project's ns.configure({"dap": {...}})
    # may carry one key only. The defaults live in code, so nothing else is lost.
    config = layers.config(collection={"dap": {"runner": {"vm": "from-tasks"}}})
    settings = resolve(config, environ=NO_ENV)
    assert settings.value("runner.vm") == "from-tasks"
    assert settings.source("runner.vm") == "tasks collection"
    assert settings.value("ssh.known_hosts") == "~/.ssh/known_hosts"


def test_dapfabs_own_collection_defaults_are_reported_as_defaults(layers):
    settings = resolve(layers.config(collection={"dap": DEFAULTS}), environ=NO_ENV)
    assert settings.source("runner.vm") == "default"


def test_dap_variables_beat_every_file(layers):
    for layer in FILE_LAYERS:
        layers.write(layer, {"runner": {"vm": f"vm-{layer}"}})
    settings = resolve(layers.config(), environ={"DAP_RUNNER_VM": "from-env"})
    assert settings.value("runner.vm") == "from-env"
    assert settings.source("runner.vm") == "env DAP_RUNNER_VM"


def test_invokes_own_env_layer_is_named_as_such(layers, monkeypatch):
    layers.write("project", {"runner": {"vm": "proj"}})
    config = layers.config(collection={"dap": DEFAULTS})
    monkeypatch.setenv("INVOKE_DAP_RUNNER_VM", "invoke-env")
    config.load_shell_env()
    settings = resolve(config, environ=NO_ENV)
    assert settings.value("runner.vm") == "invoke-env"
    assert settings.source("runner.vm") == "env INVOKE_DAP_RUNNER_VM"


def test_flags_beat_environment_variables(layers):
    settings = resolve(
        layers.config(),
        environ={"DAP_RUNNER_VM": "from-env", "DAP_RUNNER_SSH_HOST": "env@host"},
        overrides={"vm_name": "from-flag", "ssh_host": None},
    )
    assert (settings.value("runner.vm"), settings.source("runner.vm")) == ("from-flag", "flag --vm")
    assert settings.value("runner.ssh_host") == "env@host"  # a None flag is ignored


def test_overrides_may_name_dotted_paths(layers):
    config = RunnerConfig.from_invoke_config(
        layers.config(), environ=NO_ENV, overrides={"runner.gateway": "j@b", "vm": "v"}
    )
    assert (config.gateway, config.vm_name) == ("j@b", "v")


PROFILES = {
    "runner": {"ssh_host": "ops@mgmt-staging", "vm": "base"},
    "kubectl": {"namespace": "base-ns"},
    "runners": {
        "prod": {
            "ssh_host": "ops@mgmt-prod",
            "gateway": "jump@bastion-prod",
            "ssh": {"connect_timeout": 30},
            "kubectl": {"context": "prod-admin"},
        },
        "lab": {"vm": "lab-vm"},
    },
}


def test_a_profile_overlays_dap_runner_and_keeps_the_rest(layers):
    path = layers.write("user", PROFILES)
    settings = resolve(layers.config(), runner="prod", environ=NO_ENV)
    config = RunnerConfig.from_settings(settings)
    assert (config.ssh_host, config.gateway, config.vm_name, config.connect_timeout) == (
        "ops@mgmt-prod",
        "jump@bastion-prod",
        "base",
        30.0,
    )
    assert settings.source("runner.ssh_host") == f"profile prod ({path})"
    assert settings.source("runner.vm") == str(path)
    assert settings.profile == "prod"
    assert settings.profiles == ("lab", "prod")


def test_a_profile_beats_a_later_file_layer(layers):
    layers.write("user", PROFILES)
    layers.write("runtime", {"runner": {"ssh_host": "ops@runtime"}})
    assert (
        RunnerConfig.from_invoke_config(layers.config(), runner="prod", environ=NO_ENV).ssh_host
        == "ops@mgmt-prod"
    )


def test_environment_and_flags_beat_the_profile(layers):
    layers.write("project", PROFILES)
    environ = {"DAP_RUNNER_SSH_HOST": "env@host", "DAP_RUNNER_SSH_GATEWAY": "env@jump"}
    config = RunnerConfig.from_invoke_config(
        layers.config(), runner="prod", environ=environ, overrides={"gateway": "flag@jump"}
    )
    assert (config.ssh_host, config.gateway) == ("env@host", "flag@jump")


def test_the_profile_may_come_from_dap_runner_and_the_argument_wins(layers):
    layers.write("project", PROFILES)
    config = layers.config()
    assert (
        RunnerConfig.from_invoke_config(config, environ={"DAP_RUNNER": "lab"}).vm_name == "lab-vm"
    )
    assert (
        RunnerConfig.from_invoke_config(
            config, runner="prod", environ={"DAP_RUNNER": "lab"}
        ).vm_name
        == "base"
    )


def test_an_unknown_profile_is_refused_listing_the_known_ones(layers):
    layers.write("project", PROFILES)
    with pytest.raises(ConfigError) as caught:
        RunnerConfig.from_invoke_config(layers.config(), runner="prdo", environ=NO_ENV)
    assert caught.value.exit_code == 2
    assert "prdo" in caught.value.message
    assert "lab, prod" in caught.value.hint


def test_a_profile_name_is_validated_before_use(layers):
    with pytest.raises(ConfigError, match="profile name"):
        resolve(layers.config(), runner="a;b", environ=NO_ENV)


def test_kubectl_defaults_layer_files_profile_and_env(layers):
    layers.write("project", PROFILES)
    config = layers.config()
    assert kubectl_defaults(config, environ=NO_ENV) == ("base-ns", None)
    assert kubectl_defaults(config, runner="prod", environ=NO_ENV) == ("base-ns", "prod-admin")
    environ = {"DAP_KUBECTL_NAMESPACE": "env-ns", "DAP_KUBECTL_CONTEXT": "env-ctx"}
    assert kubectl_defaults(config, runner="prod", environ=environ) == ("env-ns", "env-ctx")


def test_kubectl_defaults_refuse_an_invalid_namespace(layers):
    with pytest.raises(ConfigError, match="namespace"):
        kubectl_defaults(layers.config(), environ={"DAP_KUBECTL_NAMESPACE": "Bad NS"})


@pytest.mark.parametrize(
    ("dap", "fragment"),
    [
        ({"runner": {"vm_name": "x"}}, "dap.runner.vm_name"),
        ({"ssh": {"timeout": 3}}, "dap.ssh.timeout"),
        ({"runners": {"p": {"namespace": "x"}}}, "dap.runners.p.namespace"),
        ({"runners": {"p": {"kubectl": {"ns": "x"}}}}, "dap.runners.p.kubectl.ns"),
    ],
)
def test_unknown_keys_are_refused_so_typos_are_not_ignored(layers, dap, fragment):
    layers.write("project", dap)
    runner = "p" if "runners" in dap else None
    with pytest.raises(ConfigError) as caught:
        resolve(layers.config(), runner=runner, environ=NO_ENV)
    assert fragment in caught.value.message


def test_a_section_that_is_not_a_mapping_is_refused(layers):
    layers.write("project", {"runner": "ops@mgmt"})
    with pytest.raises(ConfigError, match="dap.runner must be a mapping"):
        resolve(layers.config(), environ=NO_ENV)


def test_plain_dicts_and_invoke_contexts_are_accepted():
    plain = {"dap": {"runner": {"vm": "plain"}}}
    settings = resolve(plain, environ=NO_ENV)
    assert (settings.value("runner.vm"), settings.source("runner.vm")) == ("plain", "config")
    assert settings.source("runner.incus") == "default"
    context = Context(Config(overrides=plain, lazy=True))
    assert RunnerConfig.from_invoke_config(context, environ=NO_ENV).vm_name == "plain"


def test_the_example_invoke_yaml_documents_every_key_with_its_default():
    text = (Path(__file__).parents[2] / "invoke.yaml").read_text()
    assert yaml.safe_load(text) is None, "every key in the example must be commented out"
    start = text.index("# dap:")
    uncommented = re.sub(r"^# ?", "", text[start:], flags=re.MULTILINE)
    assert yaml.safe_load(uncommented)["dap"] == DEFAULTS
    for key in KEYS:
        assert key.env in text


def test_the_readme_table_lists_every_key_with_its_variable_and_default():
    import re
    from pathlib import Path

    from dapfab.config import KEYS

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = re.findall(r"^\| `dap\.([a-z_.]+)` \| `([A-Z_]+)` \| (.+?) \|$", readme, re.M)
    assert [(path, env) for path, env, _ in rows] == [(key.path, key.env) for key in KEYS]
    for (_, _, default), key in zip(rows, KEYS, strict=True):
        shown_default = "none" if key.default is None else f"`{key.default}`"
        assert default.startswith(shown_default), (key.path, default)
