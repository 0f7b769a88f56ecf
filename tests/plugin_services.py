"""Pytest fixtures that start real services for the session (see tests/services.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import TypeVar

import pytest

from tests.services import (
    EMULATOR_MODULE,
    FirestoreEmulator,
    MariaDB,
    PulseAudio,
    Service,
    Xvfb,
    require,
)

S = TypeVar("S", bound=Service)


def _require_binaries(*names: str) -> None:
    """Skip (or fail on CI) unless every binary is on PATH."""
    for name in names:
        if shutil.which(name) is None:
            require(name, "binary not found on PATH")


def _run(service: S) -> Iterator[S]:
    """Start ``service``, export its env for the session, then restore env and stop it."""
    with service, pytest.MonkeyPatch.context() as mp:
        for key, value in service.env().items():
            mp.setenv(key, value)
        yield service


@pytest.fixture(scope="session")
def xvfb() -> Iterator[Xvfb]:
    """A 1920x1080x24 virtual X display; DISPLAY is set while the session runs."""
    _require_binaries(Xvfb.binary)
    service = Xvfb()
    yield from _run(service)


@pytest.fixture(scope="session")
def pulse() -> Iterator[PulseAudio]:
    """A private PulseAudio with null sink ``virt``; PULSE_SERVER etc. are set for the session."""
    _require_binaries(PulseAudio.binary, "pactl")
    service = PulseAudio()
    yield from _run(service)


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    """A throwaway MariaDB; ``.url`` is also exported as OVERDRIVE_TEST_MYSQL_URL."""
    _require_binaries(MariaDB.binary, MariaDB.install_db)
    service = MariaDB()
    yield from _run(service)


@pytest.fixture(scope="session")
def firestore() -> Iterator[FirestoreEmulator]:
    """The Firestore emulator; FIRESTORE_EMULATOR_HOST and GOOGLE_CLOUD_PROJECT are set."""
    _require_binaries(FirestoreEmulator.binary)
    if not EMULATOR_MODULE.is_dir():
        require("@firestore-emulator/server", f"not installed in {EMULATOR_MODULE.parent.parent}")
    service = FirestoreEmulator()
    yield from _run(service)
