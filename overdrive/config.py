"""Typed settings shared by every command, and the TOML config file that supplies their defaults.

Precedence, highest first: command-line option, environment variable (``OVERDRIVE_*``), config file, built-in
default. The config file holds top-level keys for the global options and one table per command, e.g.::

    network = "lab"
    key-file = "~/lab.key"

    [stream]
    fps = 60

A key the command does not have is an error, so a misspelt option never passes silently.
"""

from __future__ import annotations

import logging
import os
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overdrive import paths
from overdrive.bus.security import NetworkKey, NodeIdentity
from overdrive.bus.sockets import Bus, Security
from overdrive.errors import ConfigError

log = logging.getLogger(__name__)

PASSWORD_ENV = "OVERDRIVE_PASSWORD"
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True, kw_only=True)
class GlobalOptions:
    """Options every command shares."""

    password: str | None = None
    key_file: Path | None = None
    network: str = "overdrive"
    insecure: bool = False
    log_level: str = "warning"
    discovery: bool = True
    """Announce services and find peers with mDNS (config key ``discovery``; ``--no-discovery`` per command)."""
    discovery_interfaces: str = ""
    """Interfaces or IPv4 addresses mDNS runs on, comma-separated; empty: all (config ``discovery-interfaces``)."""
    config_file: Path | None = None
    config_problem: str | None = None
    """Why the config file was not used (set only for commands that run without it: ``doctor``, ``--help``)."""

    def __post_init__(self) -> None:
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}")
        if not self.network or len(self.network) > 64:
            raise ConfigError("--network must be 1 to 64 characters")

    def network_key(self, *, cached: bool = True) -> NetworkKey | None:
        """The network key from ``--key-file`` or the password; None when ``--insecure``. ``cached=False``
        stretches the password without reading or writing the per-user key cache (``doctor`` writes nothing)."""
        if self.insecure:
            return None
        if self.key_file is not None:
            key = NetworkKey.from_file(self.key_file.expanduser())
            if self.network not in (key.network, "overdrive"):
                raise ConfigError(f"key file is for network {key.network!r}, not {self.network!r}")
            return key
        if self.password:
            if not cached:
                return NetworkKey.from_password(self.password, self.network)
            return _derivation(self.password, self.network).result()
        raise ConfigError(
            f"no network password: set {PASSWORD_ENV}, pass --password or --key-file "
            "(or --insecure for benchmarks only)"
        )

    def prefetch_key(self) -> None:
        """Start stretching the password in the background (scrypt releases the GIL), so the command's own start-up
        (imports, opening a store) overlaps it; :meth:`network_key` then waits for the result."""
        if self.password and not self.insecure and self.key_file is None:
            _derivation(self.password, self.network)

    def security(self) -> Security:
        """Identity plus network key, loading or creating the node identity on first use."""
        identity = NodeIdentity.load_or_create(paths.data_dir() / "identity.key")
        return Security(identity=identity, key=self.network_key())

    def bus(self) -> Bus:
        """A new bus configured with these options."""
        return Bus(self.security())


class _Derivation(threading.Thread):
    """One password stretch (:meth:`NetworkKey.from_password`, with the per-user cache) in a daemon thread."""

    def __init__(self, password: str, network: str, cache: Path) -> None:
        super().__init__(name="overdrive-key", daemon=True)
        self._args = (password, network)
        self._cache = cache  # the caller's: the thread must not read the environment later, when it may differ
        self._key: NetworkKey | None = None
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self._key = NetworkKey.from_password(*self._args, cache=self._cache)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller of result()
            self._error = exc

    def result(self) -> NetworkKey:
        self.join()
        if self._error is not None:
            raise self._error
        assert self._key is not None
        return self._key


_derivations: dict[tuple[str, str, str], _Derivation] = {}


def _derivation(password: str, network: str) -> _Derivation:
    """The stretch of (password, network) for the current data folders: started on first use, then shared."""
    cache = paths.cache_dir() / "keys"
    key = (password, network, str(cache))
    if key not in _derivations:
        _derivations[key] = _Derivation(password, network, cache)
    return _derivations[key]


def finish_derivations() -> None:
    """Wait for every password stretch still running. Call it before the interpreter exits: CPython 3.11 kills a
    daemon thread that wakes up during finalisation with ``pthread_exit``, and a stretch finishing at that moment
    can crash the process with SIGSEGV. The wait costs at most one stretch (~0.25 s), only to a command that ended
    before its key was ready, and leaves the derived key in the cache for the next command."""
    for derivation in list(_derivations.values()):
        derivation.join()


def read_config_file(path: Path, *, required: bool) -> dict[str, Any]:
    """Parse a TOML config file into a dict with dashes normalised to underscores."""
    try:
        with path.expanduser().open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path} does not exist") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    return _normalise(data)


def _normalise(data: dict[str, Any]) -> dict[str, Any]:
    return {k.replace("-", "_"): (_normalise(v) if isinstance(v, dict) else v) for k, v in data.items()}


def check_keys(path: Path, section: str, given: dict[str, Any], allowed: set[str]) -> None:
    """Raise ConfigError naming the config file ``path`` and the first key in ``given`` that is not in
    ``allowed``."""
    for key in given:
        if key not in allowed:
            valid = ", ".join(sorted(k.replace("_", "-") for k in allowed)) or "none"
            raise ConfigError(
                f"config file {path}: unknown option {key.replace('_', '-')!r} in [{section}]; valid: {valid}"
            )


def configure_logging(level: str) -> None:
    """Application-level logging set-up: one handler on stderr, at ``level``."""
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in {"1", "true", "yes", "on"}
