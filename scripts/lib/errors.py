"""One-line errors for the command-line verbs, and the dry run that stops each verb once
its arguments are parsed."""

import argparse
import inspect
import os
import signal
import sys
from pathlib import Path

# SGLANG_SERIES_DRY_RUN=1: every verb parses its arguments, prints them and exits 0, so a
# test can run each `make` line of the workflows and the README without the real work.
DRY_RUN = "SGLANG_SERIES_DRY_RUN"


class SeriesError(Exception):
    """A failure the user can act on; its message says what to do."""


class Terminated(BaseException):
    """SIGTERM (make forwards it to its command): unwinds like Ctrl-C, so that every
    child process is stopped and every lock released on the way out."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def run_main(main) -> None:
    """Run a verb's main(); a SeriesError becomes one line on stderr and exit 2."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        if os.environ.get(DRY_RUN):
            _stop_after_parsing(main)
        main()
    except SeriesError as exc:
        _fail(str(exc), 2)
    except KeyboardInterrupt:
        _fail("interrupted; run the same command again: it starts from where this run stopped", 130)
    except Terminated:
        _fail("terminated; run the same command again: it starts from where this run stopped", 143)
    except OSError as exc:
        # a full disk, a read-only or non-directory path: the system's words and the path
        where = f" ({exc.filename})" if exc.filename else ""
        _fail(f"{exc.strerror or exc}{where}; fix that path or free the space, then run again", 2)


def _fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _stop_after_parsing(main) -> None:
    verb = Path(sys.argv[0]).stem
    if not inspect.signature(main).parameters:  # a verb without arguments has nothing to parse
        if sys.argv[1:]:
            raise SeriesError(f"{verb} takes no arguments (got {' '.join(sys.argv[1:])})")
        print(f"dry run: {verb}")
        sys.exit(0)
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        parsed = parse(self, args, namespace)
        print(f"dry run: {verb} {vars(parsed)}")
        sys.exit(0)

    argparse.ArgumentParser.parse_args = parse_then_stop
