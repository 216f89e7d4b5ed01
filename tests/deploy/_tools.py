"""Helpers shared by the deployment tests: finding the CLI tools installed by
scripts/install-deploy-tools.sh (scripts/test.sh runs it), and failing clearly when they are absent."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL_HINT = "run: bash scripts/install-deploy-tools.sh .venv"


def missing(what: str) -> None:
    """A missing tool is a failure, never a skip: a skipped check would hide a broken deployment."""
    pytest.fail(f"{what} is not installed ({INSTALL_HINT})")


def find_tool(name: str) -> str:
    """Path of a console tool: next to the running interpreter (the venv) first, then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        missing(name)
    assert found is not None
    return found


def need_module(name: str):  # type: ignore[no-untyped-def]
    try:
        return __import__(name)
    except ImportError:
        missing(f"python module {name!r}")
