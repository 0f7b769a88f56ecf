"""Where overdrive keeps its files: config, identity, key cache, index database and backup folder.

``OVERDRIVE_HOME`` puts everything under one folder (tests and portable installs); otherwise the platform's
per-user directories are used.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "overdrive"


def _home() -> Path | None:
    value = os.environ.get("OVERDRIVE_HOME")
    return Path(value).expanduser() if value else None


def config_dir() -> Path:
    """Folder holding ``config.toml``."""
    home = _home()
    return home / "config" if home else Path(platformdirs.user_config_dir(APP))


def data_dir() -> Path:
    """Folder holding the node identity and the default index database."""
    home = _home()
    return home / "data" if home else Path(platformdirs.user_data_dir(APP))


def cache_dir() -> Path:
    """Folder holding derived keys and hash caches (safe to delete, re-derived on demand)."""
    home = _home()
    return home / "cache" if home else Path(platformdirs.user_cache_dir(APP))


def backup_dir() -> Path:
    """Default folder where recordings and fetched files land, and which ``share`` serves."""
    home = _home()
    return home / "backup" if home else data_dir() / "backup"


def default_config_file() -> Path:
    """The config file read when ``--config`` is not given."""
    return config_dir() / "config.toml"


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600, creating parent folders (mode 0700)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
