"""One-line errors for the command-line verbs."""

import sys


class SeriesError(Exception):
    """A failure the user can act on; its message says what to do."""


def run_main(main) -> None:
    """Run a verb's main(); a SeriesError becomes one line on stderr and exit 2."""
    try:
        main()
    except SeriesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
