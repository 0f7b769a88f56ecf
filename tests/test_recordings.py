"""Recordings and the stream's lifetime through the real CLI on loopback: every way a stream or a viewer stops
leaves a visible, playable MP4 (checked with PyAV), and a viewer waits for a stream that has not started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import av
import pytest

from tests.services import free_port, require
from tests.test_stream_cli import _Lines, finish, wait_listening


def spawn(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """A stream or view that records (unlike test_stream_cli's), video only."""
    extra = ["--audio", "none"] if args[0] == "stream" else []
    return subprocess.Popen(
        [sys.executable, "-m", "overdrive", *args, *extra],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def streamer(port: int, backup: Path, env: dict[str, str], cwd: Path, *more: str) -> subprocess.Popen[str]:
    args = ["stream", "--source", "testpattern", "--bind", f"tcp://127.0.0.1:{port}", "--backup", str(backup)]
    return spawn([*args, *more], env, cwd)


def viewer(port: int, backup: Path, env: dict[str, str], cwd: Path, *more: str) -> subprocess.Popen[str]:
    return spawn(["view", f"127.0.0.1:{port}", "--headless", "--backup", str(backup), *more], env, cwd)


def seconds(path: Path) -> float:
    """Video seconds in an MP4, by its packets (what a player can show)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        end = max(p.pts + p.duration for p in container.demux(stream) if p.pts is not None)
        return float(end * stream.time_base)


def recordings(folder: Path) -> list[Path]:
    """The visible MP4s in ``folder``; fails if any partial file is left."""
    names = sorted(os.listdir(folder)) if folder.exists() else []
    assert not [n for n in names if n.endswith(".part")], names
    return [folder / n for n in names if n.endswith(".mp4")]


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def wait_recording(view: subprocess.Popen[str], said: _Lines, folder: Path) -> None:
    """Wait until the viewer records (a partial file with data in ``folder``); fails at once if it exits."""

    def recording() -> bool:
        if view.poll() is not None:
            pytest.fail(f"the viewer exited ({view.returncode}): {''.join(said.lines)[-2000:]}")
        return folder.exists() and any(part.stat().st_size > 0 for part in folder.glob(".*.part"))

    wait_for(recording, 30, "the viewer to record")


@pytest.fixture
def env(network, tmp_path: Path) -> dict[str, str]:
    return network.env(tmp_path / "home")


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM], ids=["hangup", "term"])
def test_closing_the_terminal_finishes_both_recordings(env: dict[str, str], tmp_path: Path, sig) -> None:
    port = free_port()
    stream = streamer(port, tmp_path / "s", env, tmp_path)
    view: subprocess.Popen[str] | None = None
    try:
        wait_listening(port, stream)
        view = viewer(port, tmp_path / "v", env, tmp_path)
        said = _Lines(view)
        assert view.stdout is not None and view.stdout.readline().startswith("overdrive: view ready")
        wait_recording(view, said, tmp_path / "v")
        time.sleep(3)
        view.send_signal(sig)
        code, err = said.finish(timeout=20)
        assert code == 0, err
    finally:
        if view is not None and view.poll() is None:
            view.kill()
            said.finish(timeout=10)
        stream.send_signal(sig)
        scode, serr = finish(stream)
    assert scode == 0, serr
    for folder, err_text in ((tmp_path / "s", serr), (tmp_path / "v", err)):
        (mp4,) = recordings(folder)
        assert seconds(mp4) > 1.5, mp4
        assert "recorded " in err_text


def test_a_killed_recording_is_recovered_at_the_next_start(env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    backup = tmp_path / "b"
    stream = streamer(port, backup, env, tmp_path)
    wait_listening(port, stream)
    # recording starts once the sound devices deliver (up to 2 s after listening): count from its first bytes
    wait_for(lambda: any(p.stat().st_size > 0 for p in backup.glob(".*.part")), 30, "the streamer to record")
    time.sleep(4)
    stream.kill()
    finish(stream)
    (part,) = backup.iterdir()
    assert part.name.startswith(".") and part.name.endswith(".mp4.part")
    base = part.name[1:].removesuffix(".mp4.part")
    # the next run that records into the folder (a one-second stream; a view does the same) finds it at its start
    code, err = finish(streamer(free_port(), backup, env, tmp_path, "--duration", "1"))
    assert code == 0, err
    recovered = backup / f"{base} (recovered).mp4"
    assert recovered.exists(), err
    assert "recovered an interrupted recording" in err
    assert recovered in recordings(backup)  # beside that stream's own recording, and no partial file is left
    assert seconds(recovered) >= 2.0  # about 4 s were captured; the fragment being written when killed is lost


def test_a_viewer_waits_for_the_stream_and_records_each_run(env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    backup = tmp_path / "v"
    view = viewer(port, backup, env, tmp_path)  # the student arrives before the lecturer
    said = _Lines(view)
    try:
        wait_for(lambda: any("waiting for the stream at" in line for line in said.lines), 30, "the waiting line")
        time.sleep(4)  # longer than a connect timeout: it must still be waiting
        assert view.poll() is None, said.lines
        for run in (1, 2):
            stream = streamer(port, tmp_path / "s", env, tmp_path, "--duration", "3", "--no-record")
            code, serr = finish(stream)
            assert code == 0, serr
            wait_for(lambda: sum("ended: the streamer stopped" in line for line in said.lines) == run, 15, "the end")
            # the recording is finished while the viewer goes on waiting
            wait_for(lambda: len(recordings(backup)) == run, 15, f"recording {run}")
            assert seconds(recordings(backup)[-1]) > 1.0
            assert view.poll() is None
    finally:
        view.send_signal(signal.SIGTERM)
        code, err = said.finish(timeout=20)
    assert code == 0, err
    assert err.count("waiting for the stream at") == 1
    assert len(recordings(backup)) == 2


def test_a_viewer_infers_the_end_of_a_streamer_that_died(env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    stream = streamer(port, tmp_path / "s", env, tmp_path, "--no-record")
    backup = tmp_path / "v"
    view: subprocess.Popen[str] | None = None
    try:
        wait_listening(port, stream)
        view = viewer(port, backup, env, tmp_path)
        said = _Lines(view)
        wait_recording(view, said, backup)
        time.sleep(2)
        stream.kill()
        finish(stream)
        # the silence says the stream ended: the file is finished, visibly, while the viewer waits for a restart
        wait_for(lambda: any("ended: nothing received for" in line for line in said.lines), 30, "the end")
        wait_for(lambda: len(recordings(backup)) == 1, 15, "the finished recording")
        assert view.poll() is None, said.lines
    finally:
        if stream.poll() is None:
            stream.kill()
            finish(stream)
        if view is not None:
            view.send_signal(signal.SIGTERM)
            code, err = said.finish(timeout=30)
    assert code == 0, err
    (mp4,) = recordings(backup)
    assert seconds(mp4) > 1.0


def test_once_a_viewer_exits_when_the_stream_ends(env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    stream = streamer(port, tmp_path / "s", env, tmp_path, "--no-record", "--duration", "3")
    try:
        wait_listening(port, stream)
        code, err = finish(viewer(port, tmp_path / "v", env, tmp_path, "--once"), timeout=60)
    finally:
        finish(stream)
    assert code == 0 and "ended: the streamer stopped" in err, err
    (mp4,) = recordings(tmp_path / "v")
    assert seconds(mp4) > 1.0


def test_waiting_is_bounded_stoppable_and_not_for_a_wrong_password(env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    code, err = finish(viewer(port, tmp_path / "v", env, tmp_path, "--wait", "1.5"), timeout=30)
    assert code == 1 and f"no stream at 127.0.0.1:{port} after waiting 1.5 s" in err, err
    assert "Traceback" not in err

    view = viewer(port, tmp_path / "v", env, tmp_path)
    said = _Lines(view)
    wait_for(lambda: any("waiting for the stream" in line for line in said.lines), 30, "the waiting line")
    view.send_signal(signal.SIGINT)
    code, err = said.finish(timeout=15)
    assert code == 0 and "stopped before the stream started" in err, err

    stream = streamer(port, tmp_path / "s", env, tmp_path, "--no-record")
    try:
        wait_listening(port, stream)
        code, err = finish(viewer(port, tmp_path / "v", {**env, "OVERDRIVE_PASSWORD": "wrong"}, tmp_path), 30)
        assert code == 1 and "authentication failed" in err, err
    finally:
        stream.terminate()
        finish(stream)


@pytest.mark.parametrize("command", ["stream", "view"])
def test_an_unusable_backup_folder_is_one_line_before_streaming(env: dict[str, str], tmp_path: Path, command) -> None:
    if command == "stream":
        proc = streamer(free_port(), Path("/proc/nope"), env, tmp_path, "--duration", "5")
    else:
        proc = viewer(free_port(), Path("/proc/nope"), env, tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert err.strip().splitlines() == [
        "overdrive: error: cannot record into /proc/nope: No such file or directory "
        "(choose a folder with --backup, or --no-record)"
    ]
    assert out == ""  # nothing was streamed or watched


def test_a_file_given_as_the_backup_folder_is_named_as_such(env: dict[str, str], tmp_path: Path) -> None:
    afile = tmp_path / "notes.txt"
    afile.write_text("not a folder")
    proc = viewer(free_port(), afile, env, tmp_path, "--wait", "30")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert err.strip().splitlines() == [
        f"overdrive: error: cannot record into {afile}: it is a file, not a folder (choose a folder with --backup)"
    ]
    assert out == ""
    assert afile.read_text() == "not a folder"


@pytest.fixture
def small_disk(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A real small file system (40 MB unless the test asks for another size), so a recording can fill it."""
    size = getattr(request, "param", "40m")
    if os.geteuid() != 0:
        require("root", "mounting a small file system needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=False, capture_output=True
    )
    if done.returncode != 0:
        require("tmpfs", f"cannot mount one: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _growing_part(folder: Path) -> bool:
    """Whether a recording in progress (a hidden ``.part``) holds more than its first fragment."""
    return any(part.stat().st_size > (256 << 10) for part in folder.glob(".*.part"))


# 4 MB: a disk smaller than the usual free-space margin still resumes once it is emptied
@pytest.mark.parametrize("small_disk", ["40m", "4m"], indirect=True)
def test_a_full_disk_keeps_what_plays_and_recording_resumes(
    env: dict[str, str], tmp_path: Path, small_disk: Path
) -> None:
    fill = small_disk / "fill"
    with fill.open("wb") as f:  # leave about half a megabyte: a few seconds of the test pattern
        f.truncate(0)
        free = os.statvfs(small_disk)
        f.write(b"\0" * (free.f_bavail * free.f_frsize - (512 << 10)))
    port = free_port()
    stream = streamer(port, tmp_path / "s", env, tmp_path, "--no-record")
    view: subprocess.Popen[str] | None = None
    try:
        wait_listening(port, stream)
        view = viewer(port, small_disk, env, tmp_path)
        said = _Lines(view)
        wait_for(lambda: any("recording stopped: no space left" in line for line in said.lines), 60, "a full disk")
        fill.unlink()
        wait_for(lambda: any("space is free again" in line for line in said.lines), 30, "recording to resume")
        wait_for(lambda: _growing_part(small_disk), 30, "the new recording to hold a second of video")
        view.send_signal(signal.SIGTERM)
        code, err = said.finish(timeout=30)
    finally:
        if view is not None and view.poll() is None:
            view.kill()
            said.finish(timeout=10)
        stream.terminate()
        finish(stream)
    assert code == 1, err  # it recorded less than it was asked to
    assert "Traceback" not in err
    assert err.count("no space left") == 1
    assert "recording stopped 1 time(s) for lack of space" in err
    mp4s = recordings(small_disk)
    assert len(mp4s) == 2, (mp4s, err)
    first, second = mp4s
    assert seconds(first) > 1.0 and seconds(second) > 1.0
    for mp4 in (first, second):
        with av.open(str(mp4)) as container:  # every packet decodes: nothing was cut mid-NAL
            for frame in container.decode(video=0):
                assert frame.width == 1280
