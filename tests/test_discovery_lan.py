"""Discovery on a simulated LAN: machines are network namespaces on a bridge (tests/netns.py), so mDNS never runs
on the host's real interfaces. A lecturer's machine runs a stream, a master and a share; a student's machine finds
them with no address typed."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from overdrive.bus.ready import parse_ready
from tests import netns
from tests.conftest import TestNetwork
from tests.services import require

QUIET_STREAM = ("--source", "testpattern", "--fps", "10", "--audio", "none", "--no-record")


@pytest.fixture(scope="session")
def _no_stale_namespaces() -> None:
    problem = netns.usable()
    if problem is not None:
        require("network namespaces", problem)
    netns.clean_stale()


@pytest.fixture
def lan(_no_stale_namespaces: None) -> Iterator[netns.Lan]:
    lan = netns.Lan()
    try:
        yield lan
    finally:
        lan.close()


def env(network: TestNetwork, home: Path, **extra: str) -> dict[str, str]:
    """A child's environment on ``network`` with discovery on (conftest turns it off for everything else)."""
    child = {**network.env(home), **extra}
    if "OVERDRIVE_NO_DISCOVERY" not in extra:
        child.pop("OVERDRIVE_NO_DISCOVERY", None)
    return child


def ready(proc: subprocess.Popen[str], what: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        pytest.fail(f"{what} did not start: {proc.communicate(timeout=10)[1][-2000:]}")
    assert parse_ready(line).what == what, line


def until(check: object, seconds: float = 20) -> None:
    """Call ``check`` (raising AssertionError while not yet true) until it passes or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            check()  # type: ignore[operator]
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def streams(lan: netns.Lan, machine: str, child_env: dict[str, str], tmp: Path) -> list[dict[str, object]]:
    done = lan.run(machine, ["streams", "--json"], child_env, tmp)
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, object]] = json.loads(done.stdout)
    return rows


def test_student_finds_stream_master_and_share_with_no_address(
    lan: netns.Lan, network: TestNetwork, tmp_path: Path
) -> None:
    lan.machine("a")
    lan.machine("b")
    lecturer = env(network, tmp_path / "a")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "week1.txt").write_text("notes\n")

    master = lan.spawn("a", ["master", "--stats", "0"], env(network, tmp_path / "am"), tmp_path)
    ready(master, "master")
    share = lan.spawn("a", ["share", str(shared), "--no-watch"], env(network, tmp_path / "as"), tmp_path)
    ready(share, "share")
    stream = lan.spawn("a", ["stream", *QUIET_STREAM, "--name", "lecture"], lecturer, tmp_path)
    ready(stream, "stream")

    student = env(network, tmp_path / "b")
    rows = streams(lan, "b", student, tmp_path)
    assert [(r["name"], r["same_network"]) for r in rows] == [("lecture", True)], rows
    assert rows[0]["address"] == f"{lan.addresses['a']}:7770"

    stats = tmp_path / "view.json"
    viewed = lan.run(
        "b", ["view", "--headless", "--no-record", "--duration", "4", "--stats-json", str(stats)], student, tmp_path
    )
    assert viewed.returncode == 0, viewed.stderr
    assert "found stream 'lecture'" in viewed.stderr
    assert json.loads(stats.read_text())["frames_shown"] > 0

    def listed() -> None:
        done = lan.run("b", ["ls", "--json"], student, tmp_path)
        assert done.returncode == 0, done.stderr
        assert [f["name"] for f in json.loads(done.stdout)] == ["week1.txt"], done.stdout
        assert "found master(s) by discovery" in done.stderr

    until(listed)
    fetched = lan.run("b", ["fetch", "week1.txt", "--out", str(tmp_path / "got"), "--json"], student, tmp_path)
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "got" / "week1.txt").read_text() == "notes\n"
    by_hand = lan.run("b", ["ls", "--json", "--master", f"{lan.addresses['a']}:7771"], student, tmp_path)
    assert by_hand.returncode == 0 and "discovery" not in by_hand.stderr, by_hand.stderr  # typed addresses win


def test_a_master_finds_its_peer_masters(lan: netns.Lan, network: TestNetwork, tmp_path: Path) -> None:
    lan.machine("a")
    lan.machine("b")
    mesh = ["master", "--stats", "0", "--mesh-key", str(network.mesh_key_file(tmp_path))]
    first = lan.spawn("a", mesh, env(network, tmp_path / "ma"), tmp_path)
    ready(first, "master")
    second = lan.spawn("b", mesh, env(network, tmp_path / "mb"), tmp_path)
    assert second.stdout is not None
    line = second.stdout.readline()
    assert parse_ready(line).details[-2] == f"peers {lan.addresses['a']}:7771", line


def test_another_password_sees_another_network_and_view_refuses(
    lan: netns.Lan, network: TestNetwork, tmp_path: Path
) -> None:
    lan.machine("a")
    lan.machine("b")
    stream = lan.spawn("a", ["stream", *QUIET_STREAM, "--name", "lecture"], env(network, tmp_path / "a"), tmp_path)
    ready(stream, "stream")
    other = env(network, tmp_path / "b", OVERDRIVE_PASSWORD="another class")
    rows = streams(lan, "b", other, tmp_path)
    assert [(r["name"], r["same_network"]) for r in rows] == [("lecture", False)], rows
    refused = lan.run("b", ["view", "--headless", "--no-record", "--duration", "2"], other, tmp_path)
    assert refused.returncode == 1, refused.stderr
    assert "no live stream of this network" in refused.stderr and "another network" in refused.stderr


def test_several_streams_are_listed_and_one_is_picked_by_name(
    lan: netns.Lan, network: TestNetwork, tmp_path: Path
) -> None:
    lan.machine("a")
    lan.machine("b")
    for name, port in (("lecture", 7770), ("lab", 7780)):
        proc = lan.spawn(
            "a",
            ["stream", *QUIET_STREAM, "--name", name, "--bind", f"tcp://0.0.0.0:{port}"],
            env(network, tmp_path / name),
            tmp_path,
        )
        ready(proc, "stream")
    student = env(network, tmp_path / "b")
    several = lan.run("b", ["view", "--headless", "--no-record", "--duration", "2"], student, tmp_path)
    assert several.returncode == 2, several.stderr
    assert "lecture" in several.stderr and "lab" in several.stderr and "--stream NAME" in several.stderr
    picked = lan.run(
        "b", ["view", "--headless", "--no-record", "--duration", "2", "--stream", "lab"], student, tmp_path
    )
    assert picked.returncode == 0, picked.stderr
    assert f"found stream 'lab' at {lan.addresses['a']}:7780" in picked.stderr


def test_no_multicast_is_one_warning_and_addresses_still_work(
    lan: netns.Lan, network: TestNetwork, tmp_path: Path
) -> None:
    lan.machine("a")
    lan.machine("c", multicast=False)
    stream = lan.spawn("a", ["stream", *QUIET_STREAM, "--name", "lecture"], env(network, tmp_path / "a"), tmp_path)
    ready(stream, "stream")
    student = env(network, tmp_path / "c")
    listed = lan.run("c", ["streams", "--json"], student, tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
    warnings = [line for line in listed.stderr.splitlines() if "warning" in line]
    assert len(warnings) <= 1 and "Traceback" not in listed.stderr, listed.stderr
    by_hand = lan.run(
        "c",
        ["view", f"{lan.addresses['a']}:7770", "--headless", "--no-record", "--duration", "3"],
        student,
        tmp_path,
    )
    assert by_hand.returncode == 0, by_hand.stderr
    assert "received" in by_hand.stderr


def test_no_discovery_switch_keeps_the_old_default(lan: netns.Lan, network: TestNetwork, tmp_path: Path) -> None:
    lan.machine("a")
    master = lan.spawn("a", ["master", "--stats", "0"], env(network, tmp_path / "am"), tmp_path)
    ready(master, "master")
    off = env(network, tmp_path / "b", OVERDRIVE_NO_DISCOVERY="1")
    done = lan.run("a", ["view", "--headless"], off, tmp_path)
    assert done.returncode == 2 and "discovery is off" in done.stderr, done.stderr
    listed = lan.run("a", ["ls", "--json", "--timeout", "2"], off, tmp_path)
    assert "by discovery" not in listed.stderr
    assert listed.returncode == 0, listed.stderr  # the default 127.0.0.1:7771 is this machine's master


FAKE_MASTER = """
import sys, time
from overdrive.bus.discovery import Announcement, DiscoverySettings, network_tag
from overdrive.bus.discovery_mdns import Announcer
from overdrive.bus.security import NetworkKey
tag = network_tag(NetworkKey.from_password(sys.argv[1], sys.argv[2]).server_secret)  # a tag copied off the LAN
announcer = Announcer(DiscoverySettings())
announcer.announce(Announcement(role="master", name="aaa fake", node_id="fakefakefakefake",
    fingerprint="0000-0000-0000-0000", tag=tag, addresses=(sys.argv[3],), port=7771))
print("announced", flush=True)
time.sleep(300)
"""


def test_a_fake_master_costs_one_timeout_and_the_real_one_answers(
    lan: netns.Lan, network: TestNetwork, tmp_path: Path
) -> None:
    lan.machine("a")
    lan.machine("b")
    master = lan.spawn("a", ["master", "--stats", "0"], env(network, tmp_path / "am"), tmp_path)
    ready(master, "master")
    nowhere = lan.addresses["a"].rsplit(".", 1)[0] + ".99"  # nobody on the LAN has it
    code = FAKE_MASTER.replace("sys.argv[1]", repr(network.password)).replace("sys.argv[2]", repr(network.name))
    fake = lan.python("b", code.replace("sys.argv[3]", repr(nowhere)), env(network, tmp_path / "f"), tmp_path)
    assert fake.stdout is not None and fake.stdout.readline() == "announced\n", fake.stderr
    done = lan.run("b", ["ls", "--json", "--timeout", "2"], env(network, tmp_path / "b"), tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"by discovery: {nowhere}:7771, {lan.addresses['a']}:7771" in done.stderr, done.stderr
