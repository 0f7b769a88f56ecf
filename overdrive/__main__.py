"""``python -m overdrive``, and the ``overdrive`` console script (setup.cfg points it at :func:`run`)."""

import contextlib
import os
import sys


def run() -> None:
    """Import the CLI and run it; a Ctrl-C nothing else caught (say, while the CLI is still importing) is one line."""
    try:
        from overdrive.cli.root import main

        main()
    except KeyboardInterrupt:
        sys.stderr.write("overdrive: interrupted\n")
        sys.exit(130)
    finally:
        _settle()


def _settle() -> None:
    """Let background work end before the interpreter does (see :func:`overdrive.config.finish_derivations`). A
    Ctrl-C during that wait exits at once, without finalising the interpreter under a running thread."""
    config = sys.modules.get("overdrive.config")
    if config is None:
        return
    try:
        config.finish_derivations()
    except KeyboardInterrupt:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
            sys.stderr.write("overdrive: interrupted\n")
            sys.stderr.flush()
        os._exit(130)


if __name__ == "__main__":
    run()
