"""A release whose constructor no longer fits the seam's arguments or stand-ins reads as
cannot-run naming the release and what was being built, never as a raw exception out of
the seam; an error inside the code a check judges stays the check's."""

import pytest

import seam


class Release:
    """A synthetic upstream's constructor: it reads a field the stand-in lacks."""

    def __init__(self, runner, *, page_size):
        self.algorithm = runner.spec_algorithm.name


class OldRunner:
    """A stand-in written for an earlier release (no spec_algorithm)."""


def test_a_misfit_constructor_is_cannot_run_naming_release_and_piece():
    with pytest.raises(seam.CannotRun) as caught:
        with seam.building("the attention backend"):
            Release(OldRunner(), page_size=256)
    message = str(caught.value)
    assert message.startswith(f"{seam.CANNOT_RUN} {seam.release()}: cannot build the attention backend")
    assert "AttributeError" in message and "spec_algorithm" in message


def test_a_lost_keyword_is_cannot_run_before_the_judged_call_runs():
    calls = []

    def build(*, params, kvcache):
        calls.append(params)

    with pytest.raises(seam.CannotRun, match="build does not take the arguments"):
        seam.require_call(build, "build", params=1, kvcache=2, server_args=3)
    seam.require_call(build, "build", params=1, kvcache=2)
    assert calls == []


def test_an_error_the_check_judges_is_left_alone():
    with pytest.raises(ValueError, match="SWA pool must be PP-stage-local"):
        with seam.building("the HiCache stack"):
            raise ValueError("SWA pool must be PP-stage-local")


def test_one_idiom_as_a_decorator_too():
    """`@seam.building(...)` on an adapter function: the same rule as the with-block."""

    @seam.building("the request pool")
    def fixture(runner):
        return Release(runner, page_size=1)

    with pytest.raises(seam.CannotRun, match="cannot build the request pool .AttributeError"):
        fixture(OldRunner())

    @seam.building("the request pool")
    def judged():
        raise ValueError("not a misfit")

    with pytest.raises(ValueError, match="not a misfit"):
        judged()
