"""``k8s.curl --json`` output: the same JSON, with nothing a terminal would act on."""

import json

import pytest

from dapfab.tasks.k8s import json_text


@pytest.mark.parametrize("char", ["\x9b", "\x85", "\u202e", "\u2066", "\x1b", "\x07"])
def test_controls_and_bidi_overrides_are_written_as_escapes(char: str) -> None:
    value = {"body": f"a{char}[2Kb", "headers": {"x": [char]}}
    text = json_text(value, indent=2)
    assert char not in text
    assert json.loads(text) == value


def test_other_text_stays_readable() -> None:
    value = {"body": "grüße 東京 \u00a0 ok"}
    assert json_text(value) == '{"body": "grüße 東京 \u00a0 ok"}'
