"""The one place where the tests meet a release's internals.

Checks (tests/registered) say what behaviour is right; the modules of this package
say how to get the objects they check on the installed sglang: where a class lives,
which constructor arguments it takes, which global state it reads. When a release
moves one of those, an adapter here changes and no check does.

When the installed release lacks what a test needs, the adapter raises CannotRun:
pytest reports the test as skipped with a reason that starts with CANNOT_RUN, which
tests/conftest.py shows as its own outcome (``cannot-run``) and the tooling
(make matrix, make rebase) reads as "this test cannot judge this release", never as
a pass and never as a failing check.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import unittest
from functools import lru_cache

# scripts/lib/pytest_run.py reads this prefix from pytest's reports.
CANNOT_RUN = "cannot run on sglang"


@lru_cache(maxsize=None)
def release() -> str:
    """The installed sglang's version, local label included (0.5.12+dsv4fix.4)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sglang")
    except PackageNotFoundError:
        return "unknown"


def release_tuple() -> tuple[int, ...]:
    """(0, 5, 13, 1) for 0.5.13.post1: for choosing an adapter family, never for a check."""
    public = release().split("+")[0].replace(".post", ".")
    return tuple(int(part) for part in public.split(".") if part.isdigit())


class CannotRun(unittest.SkipTest):
    """The installed release lacks something a test needs to reach its checks. The reason
    names the adapter that could not build it (tests/seam/<file>): the one to port."""

    def __init__(self, why: str):
        where = _adapter()
        super().__init__(f"{CANNOT_RUN} {release()}: {why}" + (f" [{where}]" if where else ""))

    def _with(self, message: str) -> "CannotRun":
        unittest.SkipTest.__init__(self, message)
        return self


_SEAM = os.path.dirname(os.path.abspath(__file__))


def _adapter() -> str | None:
    """tests/seam/<file> of the innermost adapter on the stack, if any."""
    for frame in inspect.stack(context=0)[2:]:
        path = os.path.abspath(frame.filename)
        if os.path.dirname(path) == _SEAM and os.path.basename(path) != "__init__.py":
            return f"tests/seam/{os.path.basename(path)}"
    return None


def require(condition: bool, why: str) -> None:
    if not condition:
        raise CannotRun(why)


def raised_by_release(exc: BaseException) -> bool:
    """Whether an exception came out of the release's own code (its innermost frame lies
    in the installed sglang): a check counts the release's asserts as the bug, never an
    assert of its own fixtures or of the seam, which must surface as they are."""
    import traceback

    import sglang

    frames = traceback.extract_tb(exc.__traceback__)
    home = os.path.dirname(os.path.abspath(sglang.__file__)) + os.sep
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(home)


def applies_only_if(condition: bool, why: str) -> None:
    """An ordinary skip where the release has no such behaviour at all (upstream
    removed what the check guards): nothing is left for the check to judge, which
    is not a test that failed to reach its checks."""
    if not condition:
        raise unittest.SkipTest(f"not applicable to sglang {release()}: {why}")


def locate(what: str, *candidates: str):
    """The first of "module:attribute" candidates that this release has; CannotRun
    (naming every place looked at) when none does. Releases move classes between
    modules; the candidates list the known homes, oldest first."""
    tried = []
    for candidate in candidates:
        module, _, attr = candidate.partition(":")
        try:
            found = importlib.import_module(module)
        except ImportError as exc:
            tried.append(f"{module} ({exc.__class__.__name__})")
            continue
        if attr and not hasattr(found, attr):
            tried.append(candidate)
            continue
        return getattr(found, attr) if attr else found
    raise CannotRun(f"{what} not found (looked at {', '.join(tried)})")


def accepted(fn, forwards_to=None, **kwargs) -> dict:
    """The keyword arguments that fn's signature names: releases add and drop optional
    constructor arguments, and a check passes the same intent to each. A catch-all
    **kwargs accepts everything, unless fn hands it on to `forwards_to`: then what that
    one does not name is dropped too."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        if forwards_to is None:
            return kwargs
        inner = accepted(forwards_to, **{k: v for k, v in kwargs.items() if k not in params})
        return {k: v for k, v in kwargs.items() if k in params or k in inner}
    return {k: v for k, v in kwargs.items() if k in params}


def takes(fn, name: str) -> bool:
    return name in inspect.signature(fn).parameters


# What a release's code raises when an adapter's arguments or stand-ins no longer
# fit it (a keyword it lost, an attribute a stand-in lacks, a module that moved).
MISFIT = (AttributeError, TypeError, ImportError)


class building(contextlib.ContextDecorator):
    """The one idiom for "this release cannot build what the checks need": around a
    release's constructor of an object no check judges (a pool, a backend, a batch), as
    ``with building("a pool"):``, or on an adapter function that builds a fixture, as
    ``@building("a pool")``. Whatever the release raises there (a keyword it lost, an
    attribute a stand-in lacks, a module that moved) becomes CannotRun naming the release,
    what was being built, the error and the adapter. Never around the code a check
    judges: its errors are the check's outcome."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if not isinstance(exc, MISFIT):
            return False
        where = _adapter_in(tb) or _adapter()
        raise CannotRun.__new__(CannotRun)._with(
            f"{CANNOT_RUN} {release()}: cannot build {self.what} ({type(exc).__name__}: {exc})"
            + (f" [{where}]" if where else "")) from exc


def _adapter_in(tb) -> str | None:
    """tests/seam/<file> of the innermost adapter frame of a traceback."""
    found = None
    while tb is not None:
        path = os.path.abspath(tb.tb_frame.f_code.co_filename)
        if os.path.dirname(path) == _SEAM and os.path.basename(path) != "__init__.py":
            found = f"tests/seam/{os.path.basename(path)}"
        tb = tb.tb_next
    return found


def require_call(fn, what: str, *args, **kwargs) -> None:
    """CannotRun unless ``fn`` takes these arguments: for a call whose execution a
    check judges, the arguments are checked before it, so a release that changed
    the signature reads as cannot-run and a fault inside stays the check's."""
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as exc:
        raise CannotRun(f"{what} does not take the arguments the seam passes: {exc}") from exc
