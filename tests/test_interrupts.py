"""Ctrl-C handling (overdrive.interrupts): a signal is recorded, never lost, and raised where the loop checks.

The signals go to child processes: SIGINT at the pytest process itself would end the session if a handler were
missing. conftest makes sure children start with SIGINT at its default, also when the run is a background job.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from overdrive import interrupts

TRIALS = 150

_FRAMES = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    import zmq
    from overdrive import interrupts

    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://x")
    b.connect("inproc://x")
    payload = b"x" * 70000
    lost = 0
    for trial in range({trials}):
        try:
            with interrupts.deferred() as check:
                # until the signal is raised, so it always lands inside the block however late the timer fires;
                # one that never comes out of check() is lost
                deadline = time.monotonic() + 20
                i = 0
                while time.monotonic() < deadline:
                    a.send(payload, copy=False)
                    frame = b.recv(copy=False)
                    del frame  # pyzmq checks for signals while freeing it, and drops what a handler raises there
                    check()
                    if i == 50:  # from another thread, so it lands wherever the main thread happens to be
                        threading.Timer(0.001, os.kill, (os.getpid(), signal.SIGINT)).start()
                    i += 1
            lost += 1
            break  # one is enough to fail
        except KeyboardInterrupt:
            pass
    print(lost)
    """
)


def _child(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_a_ctrl_c_that_lands_while_pyzmq_frees_a_frame_is_not_lost() -> None:
    # With Python's default handler (raise KeyboardInterrupt at once) about a third of these signals vanish: pyzmq
    # runs the handler inside Frame.__dealloc__ and prints "Exception ignored". That is how `overdrive fetch`
    # ignored a Ctrl-C in CI and finished the download with exit 0.
    done = _child(_FRAMES.format(trials=TRIALS))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0", f"{done.stdout.strip()} of {TRIALS} signals lost: {done.stderr[-500:]}"
    assert "Exception ignored" not in done.stderr


def test_the_signal_is_raised_at_the_check_and_again_on_exit_if_unchecked() -> None:
    code = textwrap.dedent(
        """
        import os, signal
        from overdrive import interrupts
        calls = []
        with interrupts.deferred(on_signal=lambda: calls.append(1)) as check:
            os.kill(os.getpid(), signal.SIGTERM)  # handled here, and only recorded
            print("after signal", calls)
            try:
                check()
            except KeyboardInterrupt:
                print("raised at check")
        try:
            with interrupts.deferred() as check:
                os.kill(os.getpid(), signal.SIGINT)
                print("unchecked")
        except KeyboardInterrupt:
            print("raised on exit")
        print(signal.getsignal(signal.SIGINT) is signal.default_int_handler,
              signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
        """
    )
    done = _child(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:5] == [
        "after signal [1]",
        "raised at check",
        "unchecked",
        "raised on exit",
        "True True",  # the previous handlers are back
    ]


def test_a_closed_terminal_stops_like_ctrl_c() -> None:
    # SIGHUP's default is to end the process at once, leaving recordings unfinished
    code = textwrap.dedent(
        """
        import os, signal
        from overdrive import interrupts
        with interrupts.deferred() as check:
            os.kill(os.getpid(), signal.SIGHUP)
            print("still here")
            try:
                check()
            except KeyboardInterrupt:
                print("raised at check")
        print(signal.getsignal(signal.SIGHUP) is signal.SIG_DFL)
        """
    )
    done = _child(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["still here", "raised at check", "True"]


def test_a_signal_ignored_at_start_stays_ignored() -> None:
    code = textwrap.dedent(
        """
        import os, signal
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a background job
        from overdrive import interrupts
        with interrupts.deferred() as check:
            os.kill(os.getpid(), signal.SIGINT)
            check()
        print("still here", signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
        """
    )
    done = _child(code)
    assert done.returncode == 0 and done.stdout.strip() == "still here True", done.stderr


def test_outside_the_main_thread_nothing_is_installed() -> None:
    seen: list[object] = []

    def worker() -> None:
        with interrupts.deferred() as check:
            seen.append(signal.getsignal(signal.SIGINT))
            check()

    before = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [before]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_on_signal_only_requests_the_stop(sig: signal.Signals) -> None:
    code = textwrap.dedent(
        f"""
        import os, threading
        from overdrive import interrupts
        stop = threading.Event()
        turns = 0
        try:
            with interrupts.deferred(on_signal=stop.set):
                while not stop.wait(0.01):
                    turns += 1
                    if turns == 3:
                        os.kill(os.getpid(), {int(sig)})
        except KeyboardInterrupt:
            print("loop ended after", turns)
        """
    )
    done = _child(code)
    assert done.returncode == 0 and done.stdout.strip() == "loop ended after 3", done.stderr


def test_a_stop_requested_before_another_error_is_reported_as_the_stop() -> None:
    code = textwrap.dedent(
        """
        import os, signal
        from overdrive import interrupts
        try:
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGINT)
                raise OSError("the way out failed")
        except KeyboardInterrupt as exc:
            print("stopped;", exc.__cause__)
        """
    )
    done = _child(code)
    assert done.returncode == 0 and done.stdout.strip() == "stopped; the way out failed", done.stderr


def test_an_interrupt_nothing_else_caught_is_one_line_and_130(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from overdrive import __main__ as entry

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("overdrive.cli.root.main", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        entry.run()
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == "overdrive: interrupted\n"


def test_raise_now_raises_in_the_handler_and_still_records() -> None:
    code = textwrap.dedent(
        """
        import os, signal, time
        from overdrive import interrupts
        with interrupts.deferred(raise_now=True) as check:
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)  # a wait that never checks
                print("not raised")
            except KeyboardInterrupt:
                print("raised at once")
            try:
                check()  # as if pyzmq had dropped the first one
            except KeyboardInterrupt:
                print("raised again at the check")
        """
    )
    done = _child(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["raised at once", "raised again at the check"], done.stdout
