"""``python -m overdrive``, and the ``overdrive`` console script (setup.cfg points it at :func:`run`)."""

import sys


def run() -> None:
    """Import the CLI and run it; a Ctrl-C nothing else caught (say, while the CLI is still importing) is one line."""
    try:
        from overdrive.cli import main

        main()
    except KeyboardInterrupt:
        sys.stderr.write("overdrive: interrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    run()
