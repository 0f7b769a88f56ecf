"""``overdrive chat`` with ``stream`` and ``view`` as real subprocesses, as a class would use them."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import pytest

from overdrive.bus.ready import parse_ready
from overdrive.media.chat_room import ChatLimits, Rate
from overdrive.media.chat_server import attach_chat
from overdrive.media.streamer import Streamer
from tests.services import free_port
from tests.test_stream_live import pattern_config

HOSTILE = "<img src=x onerror=alert(1)><script>alert(2)</script>"


class Lines:
    """The lines a child process writes on one of its pipes, read in a thread."""

    def __init__(self, pipe: object) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe: object) -> None:
        for line in pipe:  # type: ignore[attr-defined]
            self.queue.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.seen:
                if text in line:
                    return line
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"{text!r} not seen within {timeout:g} s; saw {self.seen[-30:]}")
            try:
                self.seen.append(self.queue.get(timeout=left))
            except queue.Empty:
                continue


class Procs:
    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env, self.cwd = env, cwd
        self.procs: list[subprocess.Popen[str]] = []

    def spawn(self, *args: str, home: str | None = None) -> subprocess.Popen[str]:
        env = dict(self.env)
        if home is not None:
            env["OVERDRIVE_HOME"] = str(self.cwd / home)
        proc = subprocess.Popen(
            [sys.executable, "-m", "overdrive", *args],
            env=env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def run(self, *args: str, home: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = self.spawn(*args, home=home)
        out, err = proc.communicate(timeout=60)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.communicate(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()


@pytest.fixture
def procs(network, tmp_path: Path) -> Iterator[Procs]:
    started = Procs(network.env(tmp_path / "home"), tmp_path)
    yield started
    started.stop()


def test_say_reaches_follow_and_a_viewer_and_the_recordings(procs: Procs, tmp_path: Path) -> None:
    port = free_port()
    streamer = procs.spawn(
        "stream", "--source", "testpattern", "--audio", "none", "--bind", f"tcp://127.0.0.1:{port}",
        "--backup", str(tmp_path / "lecturer"), "--duration", "40", home="lecturer",
    )  # fmt: skip
    assert streamer.stdout is not None and streamer.stderr is not None
    ready = parse_ready(streamer.stdout.readline())
    assert any(d.startswith("chat port ") for d in ready.details), ready
    streamer_err = Lines(streamer.stderr)
    follow = procs.spawn("chat", f"127.0.0.1:{port}", "--follow", "--json", home="follower")
    viewer = procs.spawn(
        "view", f"127.0.0.1:{port}", "--headless", "--name", "Viewer <b>", "--backup", str(tmp_path / "viewer"),
        home="viewer",
    )  # fmt: skip
    assert follow.stdout is not None and viewer.stderr is not None and viewer.stdout is not None
    follow_out, viewer_err = Lines(follow.stdout), Lines(viewer.stderr)
    streamer_err.wait_for("2 watching: Viewer <b>", 20)  # the viewer's presence, as the streamer's terminal shows it
    said = procs.run("chat", f"127.0.0.1:{port}", "--say", HOSTILE, "--name", "Ada", home="student")
    assert said.returncode == 0, said.stderr
    assert "sent as 'Ada'" in said.stderr
    sent = time.monotonic()
    record = json.loads(follow_out.wait_for(HOSTILE.replace('"', '\\"')[:20], 5))
    assert (record["name"], record["text"], record["kind"], record["host"]) == ("Ada", HOSTILE, "say", False)
    assert f"Ada: {HOSTILE}" in viewer_err.wait_for("chat: Ada:", 5)
    streamer_err.wait_for(f"chat: Ada: {HOSTILE}", 5)
    assert time.monotonic() - sent < 5
    hand = procs.spawn("chat", f"127.0.0.1:{port}", "--hand", "--name", "Bea", home="student")
    streamer_err.wait_for("hands up: Bea", 10)
    hand.terminate()  # Ctrl-C lowers it and leaves
    assert hand.wait(20) == 0
    streamer_err.wait_for("Bea left", 10)
    time.sleep(1.0)  # a little more recording after the last line
    viewer.terminate()
    streamer.terminate()
    assert viewer.wait(30) == 0 and streamer.wait(30) == 0
    for folder in ("lecturer", "viewer"):
        (mp4,) = (tmp_path / folder).glob("*.mp4")
        stem = mp4.name.removesuffix(".mp4")
        lines = [json.loads(x) for x in (mp4.parent / f"{stem}.chat.jsonl").read_text().splitlines()]
        with av.open(str(mp4)) as container:
            seconds = float(container.duration or 0) / 1e6
            assert len(container.streams.subtitles) == 1
        texts = [x["text"] for x in lines if x["kind"] == "say"]
        assert texts == [HOSTILE], (folder, lines)
        assert all(0 <= x["t"] <= seconds + 0.05 for x in lines), (folder, lines, seconds)
        assert "&lt;script&gt;" in (mp4.parent / f"{stem}.vtt").read_text()


def test_cli_errors_are_one_clear_line(network, procs: Procs) -> None:
    limits = ChatLimits(node=Rate(3, 600.0))  # a join and a line, then the node's budget is spent
    with Streamer(pattern_config(), network.bus()) as streamer:
        attach_chat(streamer, streamer.bus, limits)
        endpoint = streamer.start()
        target = f"127.0.0.1:{endpoint.port}"
        first = procs.run("chat", target, "--say", "one", home="student")
        assert first.returncode == 0, first.stderr
        second = procs.run("chat", target, "--say", "two", home="student")
        assert second.returncode == 1 and second.stderr.strip().splitlines()[-1].startswith("overdrive: error: ")
        assert "rate limited" in second.stderr or "too many joins" in second.stderr, second.stderr
        long = procs.run("chat", target, "--say", "x" * 501, home="student")
        assert long.returncode == 2 and "too long (501 characters, at most 500)" in long.stderr
        empty = procs.run("chat", target, home="student")
        assert empty.returncode == 2 and "--say TEXT, --hand or --follow" in empty.stderr
    nothing = procs.run("chat", f"127.0.0.1:{free_port()}", "--say", "hi")
    assert nothing.returncode == 1 and len(nothing.stderr.strip().splitlines()) == 1, nothing.stderr


def test_a_stream_without_chat_says_so(network, procs: Procs) -> None:
    with Streamer(pattern_config(), network.bus()) as streamer:
        endpoint = streamer.start()
        result = procs.run("chat", f"127.0.0.1:{endpoint.port}", "--say", "hi")
    assert result.returncode == 1 and "has no chat" in result.stderr, result.stderr
