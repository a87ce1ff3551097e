"""kubectl's file arguments: which words name laptop paths, how they are rewritten, what the
bundle holds and how a fetched copy is written (dapfab.laptopfiles, docs/design.md §15)."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from dapfab.errors import ConfigError
from dapfab.laptopfiles import (
    VM_DIR,
    FetchSink,
    Prefixed,
    bundle,
    for_fan_out,
    plan,
    receive,
    split_fetched,
)
from dapfab.remote import protocol

D = f"{VM_DIR}/0/deploy"
S = f"{VM_DIR}/0/secret.txt"


@pytest.fixture
def here(tmp_path: Path) -> Path:
    (tmp_path / "deploy" / "sub").mkdir(parents=True)
    (tmp_path / "deploy" / "a.yaml").write_text("a: 1\n")
    (tmp_path / "deploy" / "sub" / "b.yaml").write_text("b: 2\n")
    (tmp_path / "secret.txt").write_text("token")
    (tmp_path / "env.txt").write_text("A=1\n")
    return tmp_path


def rewrite(args: list[str], cwd: Path) -> list[str]:
    return plan(args, cwd=str(cwd)).args


@pytest.mark.parametrize(("args", "expected"), [
    (["apply", "-f", "deploy"], ["apply", "-f", D]),
    (["apply", "-f", "deploy/"], ["apply", "-f", D]),
    (["apply", "-fdeploy"], ["apply", f"-f{D}"]),
    (["apply", "-f=deploy"], ["apply", f"-f={D}"]),
    (["apply", "--filename", "deploy"], ["apply", "--filename", D]),
    (["apply", "--filename=deploy"], ["apply", f"--filename={D}"]),
    (["apply", "-R", "-f", "deploy"], ["apply", "-R", "-f", D]),
    (["apply", "-Rf", "deploy"], ["apply", "-Rf", D]),
    (["apply", "-k", "deploy"], ["apply", "-k", D]),
    (["apply", "--kustomize=deploy"], ["apply", f"--kustomize={D}"]),
    (["kustomize", "deploy"], ["kustomize", D]),
    (["-n", "prod", "apply", "-f", "deploy"], ["-n", "prod", "apply", "-f", D]),
    (["create", "secret", "generic", "t", "--from-file=key=secret.txt"],
     ["create", "secret", "generic", "t", f"--from-file=key={S}"]),
    (["create", "secret", "generic", "t", "--from-file", "secret.txt"],
     ["create", "secret", "generic", "t", "--from-file", S]),
    (["create", "configmap", "c", "--from-file=deploy"],
     ["create", "configmap", "c", f"--from-file={D}"]),
    (["create", "configmap", "c", "--from-env-file", "env.txt"],
     ["create", "configmap", "c", "--from-env-file", f"{VM_DIR}/0/env.txt"]),
    (["cp", "secret.txt", "web:/tmp/x"], ["cp", S, "web:/tmp/x"]),
    (["cp", "-c", "app", "deploy", "ns/web:/tmp"], ["cp", "-c", "app", D, "ns/web:/tmp"]),
])
def test_laptop_paths_are_rewritten(here, args, expected):
    assert rewrite(args, here) == expected


@pytest.mark.parametrize("args", [
    ["apply", "-f", "-"],
    ["apply", "-f", "missing.yaml"],
    ["apply", "-f", "https://example.com/deploy.yaml"],
    ["apply", "--filename=http://example.com/a.yaml"],
    ["logs", "-f", "deploy"],  # --follow, and a pod named like a laptop directory
    ["-n", "x", "logs", "-f", "deploy"],
    ["exec", "web", "--", "cat", "-f", "deploy"],
    ["exec", "web", "--", "kubectl", "apply", "-f", "secret.txt"],
    ["get", "-l", "-f", "pods"],  # -f is the value of -l here
    ["create", "secret", "generic", "t", "--from-file==secret.txt"],  # kubectl's own error
    ["create", "configmap", "c", "--from-env-file", "deploy"],  # a directory: kubectl's error
    ["cp", "web:/a", "web:/b"],
    ["cp", "secret.txt", "other.txt"],  # no pod on either side: kubectl's error
    ["get", "pods", "-o", "deploy"],
    ["apply"],
    ["apply", "-f"],
])
def test_other_words_pass_byte_for_byte(here, args):
    found = plan(args, cwd=str(here))
    assert found.args == args
    assert not found.needed


def test_a_path_named_twice_ships_once_and_numbers_are_per_path(here):
    found = plan(["create", "secret", "generic", "t", "--from-file=a=secret.txt",
                  "--from-file=b=secret.txt", "--from-env-file=env.txt"], cwd=str(here))
    assert found.args[-3:] == [f"--from-file=a={S}", f"--from-file=b={S}",
                               f"--from-env-file={VM_DIR}/1/env.txt"]
    assert [item.laptop for item in found.shipped] == [str(here / "secret.txt"), str(here / "env.txt")]


def test_a_unicode_name_keeps_its_basename(here):
    (here / "café 配置.yaml").write_text("x: 1\n")
    assert rewrite(["apply", "-f", "café 配置.yaml"], here) == ["apply", "-f", f"{VM_DIR}/0/café 配置.yaml"]


def test_absolute_paths_and_the_fetch_of_cp(here):
    found = plan(["cp", "web:/var/log/app.log", "logs/app.log"], cwd=str(here))
    assert found.args == ["cp", "web:/var/log/app.log", f"{VM_DIR}/out/app.log"]
    assert found.fetch.laptop == str(here / "logs" / "app.log")
    assert found.lines() == [f"fetch {VM_DIR}/out/app.log -> {here / 'logs' / 'app.log'}"]
    found = plan(["apply", "-f", str(here / "deploy")], cwd="/")
    assert found.lines() == [f"ship {here / 'deploy'} -> {D}"]


def test_fan_out_refuses_a_fetch(here):
    with pytest.raises(ConfigError) as caught:
        for_fan_out(["cp", "web:/a", "a"], cwd=str(here))
    assert caught.value.exit_code == 2 and "several runners" in str(caught.value)
    assert for_fan_out(["apply", "-f", "deploy"], cwd=str(here)).args == ["apply", "-f", D]


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {info.name: info for info in tar.getmembers()}


def test_the_bundle_holds_top_level_files_or_the_tree_with_r(here):
    assert set(members(bundle(plan(["apply", "-f", "deploy"], cwd=str(here))))) == {
        "0/deploy", "0/deploy/a.yaml"}
    assert set(members(bundle(plan(["apply", "-R", "-f", "deploy"], cwd=str(here))))) == {
        "0/deploy", "0/deploy/a.yaml", "0/deploy/sub", "0/deploy/sub/b.yaml"}
    assert set(members(bundle(plan(["apply", "-k", "deploy"], cwd=str(here))))) == {
        "0/deploy", "0/deploy/a.yaml", "0/deploy/sub", "0/deploy/sub/b.yaml"}


def test_the_bundle_keeps_modes_bytes_and_unicode_names(here):
    tool = here / "deploy" / "ünï.sh"
    tool.write_bytes(b"\x00\xff binary")
    tool.chmod(0o751)
    data = bundle(plan(["apply", "-f", "deploy"], cwd=str(here)))
    info = members(data)["0/deploy/ünï.sh"]
    assert stat.S_IMODE(info.mode) == 0o751
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.extractfile("0/deploy/ünï.sh").read() == b"\x00\xff binary"


def test_symlinks_are_followed_inside_the_directory_only(here):
    os.symlink("a.yaml", here / "deploy" / "inner.yaml")
    assert "0/deploy/inner.yaml" in members(bundle(plan(["apply", "-f", "deploy"], cwd=str(here))))
    os.symlink(str(here / "secret.txt"), here / "deploy" / "outer.yaml")
    with pytest.raises(ConfigError) as caught:
        bundle(plan(["apply", "-f", "deploy"], cwd=str(here)))
    assert caught.value.exit_code == 2 and "outer.yaml" in str(caught.value)
    # A file named directly is the user's choice: its link is followed.
    assert "0/outer.yaml" in members(bundle(plan(["apply", "-f", "deploy/outer.yaml"], cwd=str(here))))


def test_the_size_cap_names_the_file_that_crossed_it(here):
    (here / "deploy" / "z-big.yaml").write_bytes(b"x" * 2048)
    with pytest.raises(ConfigError) as caught:
        bundle(plan(["apply", "-f", "deploy"], cwd=str(here)), cap=1024)
    assert caught.value.exit_code == 2 and "z-big.yaml" in str(caught.value)
    assert str(caught.value).startswith("laptop: ")


def test_prefixed_stdin_gives_the_bundle_then_the_callers_stream():
    stream = Prefixed(b"abc", io.BytesIO(b"rest"))
    assert stream.read1(2) == b"ab" and stream.read1(10) == b"c"
    assert stream.read1(10) == b"rest" and stream.read1(10) == b""


def tar_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_a_fetched_file_is_written_and_the_marker_is_cut_from_stdout(here):
    found = plan(["cp", "web:/a.bin", "got.bin"], cwd=str(here))
    target = io.BytesIO()
    sink = FetchSink("n1", target)
    data = tar_of({"out/got.bin": b"\x00payload"})
    sink.write(b"kubectl said\n" + protocol.marker("files", "n1") + b"\n" + data[:100])
    sink.write(data[100:])
    assert target.getvalue() == b"kubectl said\n"
    receive(found.fetch, sink.fetched)
    assert (here / "got.bin").read_bytes() == b"\x00payload"
    assert sorted(p.name for p in here.iterdir() if p.name.startswith(".dapfab")) == []
    out, fetched = split_fetched(b"x" + protocol.marker("files", "n1") + b"\n" + data, "n1")
    assert (out, fetched) == (b"x", data)


def test_a_fetched_directory_goes_into_an_existing_one(here):
    found = plan(["cp", "web:/logs", "deploy"], cwd=str(here))
    receive(found.fetch, tar_of({"out/deploy/new.log": b"n", "out/deploy/sub/b.yaml": b"new"}))
    assert (here / "deploy" / "new.log").read_bytes() == b"n"
    assert (here / "deploy" / "sub" / "b.yaml").read_bytes() == b"new"
    assert (here / "deploy" / "a.yaml").exists()
