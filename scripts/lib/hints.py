"""The one builder of the `make ...` commands that messages and hints name, so every
hint spells a verb and its variables the way the Makefile reads them (tests/tooling
runs the commands the hints name)."""

from . import config


def up(paths: config.Paths, version: str) -> str:
    """' UPSTREAM_VERSION=X' for a release other than the base ('' for the base)."""
    return "" if version == config.base_version(paths) else f" UPSTREAM_VERSION={version}"


def make(paths: config.Paths, verb: str, version: str | None = None, **flags) -> str:
    """'`make verb UPSTREAM_VERSION=X FLAG=1`' (no UPSTREAM_VERSION for the base)."""
    extra = "".join(f" {k}={v}" for k, v in flags.items())
    return f"`make {verb}{up(paths, version) if version else ''}{extra}`"
