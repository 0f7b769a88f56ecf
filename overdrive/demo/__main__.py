"""``python -m overdrive.demo echo-server``: the bus step's child process."""

import sys

from overdrive.demo.bus import echo_server

if sys.argv[1:] == ["echo-server"]:
    echo_server()
