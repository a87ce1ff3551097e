"""Exactness at scale: generated argv lists cross the whole lab chain byte for byte.

laptop -> bastion -> mgmt (its login shell) -> incus exec -> the launcher -> bash -lc ->
real kubectl -> a kubectl plugin that prints its argv NUL-terminated. 300 examples in the
default run; the ``slow`` run (``pytest -m slow``) has 5,000. Zero mismatches allowed.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dapfab.run import kubectl_in_runner

pytestmark = pytest.mark.lab

ARG = st.text(
    st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40
) | st.sampled_from(["", "-", "--", "-n", "--help", "'", '"', "\\", "$(id)", "`id`", "*", "~",
                     "a\nb", "\t", " ", "${HOME}", "!!", "%s", "\u00e9\u65e5", "\x7f", "\x1b[31m"])
ARGV = st.lists(ARG, max_size=8)


def check_exact(runner_config, argv: list[str]) -> None:
    result = kubectl_in_runner(runner_config, ["argv-exact", *argv], hide=True, in_stream=False)
    assert result.stdout_bytes.split(b"\0")[:-1] == [a.encode() for a in argv]


SUPPRESS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


@settings(max_examples=300, deadline=None, suppress_health_check=SUPPRESS)
@given(argv=ARGV)
def test_generated_argv_arrives_exactly(runner_config, plugins, argv):
    check_exact(runner_config, argv)


@pytest.mark.slow
@settings(max_examples=5000, deadline=None, suppress_health_check=SUPPRESS)
@given(argv=ARGV)
def test_generated_argv_arrives_exactly_long_run(runner_config, plugins, argv):
    check_exact(runner_config, argv)
