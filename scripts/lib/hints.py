"""The one builder of the `make ...` commands that messages and hints name, so every
hint spells a verb and its variables the way the Makefile reads them (tests/tooling
runs the commands the hints name)."""

from __future__ import annotations

from . import config  # only inside functions: config itself names hints in its messages


def up(paths: config.Paths, version: str) -> str:
    """' UPSTREAM_VERSION=X' for a release other than the base ('' for the base)."""
    return "" if version == config.base_version(paths) else f" UPSTREAM_VERSION={version}"


def make(paths: config.Paths, verb: str, version: str | None = None, **flags) -> str:
    """'`make verb UPSTREAM_VERSION=X FLAG=1`' (no UPSTREAM_VERSION for the base)."""
    extra = "".join(f" {k}={v}" for k, v in flags.items())
    return f"`make {verb}{up(paths, version) if version else ''}{extra}`"


def command(verb: str, version: str | None = None, **flags) -> str:
    """'`make verb UPSTREAM_VERSION=X FLAG=1`', the release always named (pin, lock, a move)."""
    extra = "".join(f" {k}={v}" for k, v in flags.items())
    return f"`make {verb}{f' UPSTREAM_VERSION={version}' if version else ''}{extra}`"
