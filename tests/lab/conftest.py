"""Fixtures of the lab's own tests (the lab fixtures come from the dapfab_lab plugin)."""

import uuid

import pytest


@pytest.fixture
def marker() -> str:
    """A unique word to find a test's processes by."""
    return f"m{uuid.uuid4().hex[:12]}"
