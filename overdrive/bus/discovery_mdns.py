"""Zero-config discovery, the socket part: announce and browse with python-zeroconf (mDNS/DNS-SD).

A thin shell over :mod:`overdrive.bus.discovery`, which decides. Zeroconf runs its own event-loop thread; this
module only hands it work:

* :class:`Announcer` registers without probing (instance labels are unique by node id and port) and without
  waiting for the announcement broadcasts, so a command's start-up is not held up; :meth:`Announcer.close`
  unregisters (a goodbye, about 0.25 s) on every clean stop.
* :func:`browse` asks with multicast-response (QM) questions: with several mDNS sockets on one host a
  unicast-response question's answer often lands on another socket and the first answer takes a second longer.

No multicast route or a blocked port 5353 is a :class:`DiscoveryError` (one warning for the caller to print), never
a crash: addresses typed by hand keep working without discovery.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import queue
import time
from collections.abc import Sequence

import ifaddr
from zeroconf import DNSQuestionType, IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

from overdrive.bus.discovery import (
    MAX_ENTRIES,
    SERVICE_TYPES,
    SETTLE,
    Announcement,
    Directory,
    DiscoveryError,
    DiscoverySettings,
    Role,
    parse_announcement,
)
from overdrive.errors import ConfigError, ProtocolError

log = logging.getLogger(__name__)

RESOLVE_MS = 400
"""Milliseconds to wait for one service's details once its name is seen (usually they came with it)."""


def parse_interfaces(text: str) -> tuple[str, ...]:
    """``eth0,192.168.1.5`` (interface names or IPv4 addresses) as the IPv4 addresses to run mDNS on; ConfigError
    for a name that has no IPv4 address or an address no interface has."""
    wanted = [part.strip() for part in text.split(",") if part.strip()]
    if not wanted:
        return ()
    adapters = ifaddr.get_adapters()
    found: list[str] = []
    for item in wanted:
        matches = [
            str(ip.ip)
            for adapter in adapters
            for ip in adapter.ips
            if ip.is_IPv4 and (item in (adapter.nice_name, adapter.name) or item == ip.ip)
        ]
        if not matches:
            raise ConfigError(f"discovery interface {item!r}: no such interface or IPv4 address here")
        found.extend(m for m in matches if m not in found)
    return tuple(found)


def local_networks(settings: DiscoverySettings) -> list[ipaddress.IPv4Network]:
    """The IPv4 networks of this machine's interfaces (those ``settings`` restricts to)."""
    networks = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ip.is_IPv4 and isinstance(ip.ip, str) and (not settings.interfaces or ip.ip in settings.interfaces):
                networks.append(ipaddress.IPv4Network(f"{ip.ip}/{ip.network_prefix}", strict=False))
    return networks


def own_addresses(settings: DiscoverySettings, bound_host: str = "") -> tuple[str, ...]:
    """The IPv4 addresses to announce when ``--advertise`` gave none: the bound host if it is one address, else the
    non-loopback addresses of the discovery interfaces (loopback only when there is nothing else)."""
    if bound_host not in ("", "*", "0.0.0.0"):
        try:
            return (str(ipaddress.IPv4Address(bound_host)),)
        except ValueError:
            pass
    addresses: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ip.is_IPv4 and isinstance(ip.ip, str) and (not settings.interfaces or ip.ip in settings.interfaces):
                addresses.append(ip.ip)
    outside = [a for a in addresses if not ipaddress.IPv4Address(a).is_loopback]
    return tuple((outside or addresses or ["127.0.0.1"])[:4])


def _zeroconf(settings: DiscoverySettings) -> Zeroconf:
    try:
        if settings.interfaces:
            return Zeroconf(interfaces=list(settings.interfaces), ip_version=IPVersion.V4Only)
        return Zeroconf(ip_version=IPVersion.V4Only)
    except (OSError, RuntimeError) as exc:
        raise DiscoveryError(f"discovery (mDNS) is off: {exc}; give addresses by hand") from exc


class Announcer:
    """Announces services until closed. Registration runs on zeroconf's loop and is not waited for."""

    def __init__(self, settings: DiscoverySettings) -> None:
        self._zc = _zeroconf(settings)
        self._infos: list[ServiceInfo] = []

    def announce(self, announcement: Announcement) -> None:
        info = ServiceInfo(
            SERVICE_TYPES[announcement.role],
            f"{announcement.label()}.{SERVICE_TYPES[announcement.role]}",
            port=announcement.port,
            properties=announcement.txt(),
            addresses=[ipaddress.IPv4Address(a).packed for a in announcement.addresses],
            server=f"od-{announcement.node_id}.local.",
        )
        loop = self._zc.loop
        assert loop is not None
        asyncio.run_coroutine_threadsafe(
            self._zc.async_register_service(info, cooperating_responders=True), loop
        ).result(timeout=5)
        self._infos.append(info)

    def close(self) -> None:
        """Say goodbye for every service announced (so browsers drop them at once), then stop."""
        try:
            if self._infos:
                self._zc.unregister_all_services()
        except Exception as exc:  # noqa: BLE001 - a goodbye that fails must not turn a clean stop into an error
            log.debug("mDNS goodbye failed: %s", exc)
        finally:
            self._zc.close()


def browse(
    settings: DiscoverySettings,
    roles: Sequence[Role],
    *,
    timeout: float,
    settle: float | None = SETTLE,
) -> Directory:
    """Listen for announcements of ``roles`` for ``timeout`` seconds, or (``settle`` given) until ``settle`` seconds
    after the first well-formed one. Malformed ones are counted and dropped."""
    directory = Directory()
    zc = _zeroconf(settings)
    seen: queue.Queue[tuple[str, str, ServiceStateChange]] = queue.Queue(maxsize=4 * MAX_ENTRIES)
    kinds = {SERVICE_TYPES[role]: role for role in roles}

    def changed(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        try:
            seen.put_nowait((service_type, name, state_change))
        except queue.Full:
            directory.dropped += 1

    browser = ServiceBrowser(zc, list(kinds), handlers=[changed], question_type=DNSQuestionType.QM)
    try:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                service_type, name, state = seen.get(timeout=left)
            except queue.Empty:
                break
            if state is ServiceStateChange.Removed:
                directory.remove(name)
                continue
            announcement = _resolve(zc, kinds[service_type], service_type, name, directory)
            if announcement is not None and directory.add(announcement) and settle is not None:
                deadline = min(deadline, time.monotonic() + settle)
    finally:
        browser.cancel()
        zc.close()
    return directory


def _resolve(zc: Zeroconf, role: Role, service_type: str, name: str, directory: Directory) -> Announcement | None:
    info = zc.get_service_info(service_type, name, timeout=RESOLVE_MS, question_type=DNSQuestionType.QM)
    if info is None or info.port is None:
        return None
    try:
        return parse_announcement(role, name, info.addresses_by_version(IPVersion.V4Only), info.port, info.properties)
    except ProtocolError as exc:
        directory.malformed += 1
        log.debug("dropped announcement %r: %s", name[:80], exc)
        return None


__all__ = [
    "Announcer",
    "DiscoveryError",
    "DiscoverySettings",
    "browse",
    "local_networks",
    "own_addresses",
    "parse_interfaces",
]
