"""Allow ``python -m overdrive``."""

from overdrive.cli import main

main()
