"""Which URLs a load test may hit. Pure code (the DNS lookup aside).

A load test is a machine perfgate points at a URL and lets loose, so the URL is checked twice:
its host and port against the project's allowlist, and the addresses that host resolves to.

An allowlist entry is a host (``staging.example``, ``*.vercel.app``) or a host with a port
(``staging.example:8443``, ``[::1]:8080``). An entry without a port allows ports 80 and 443 and
the ports of the scenario's own configured URLs (its target and reference), which ops wrote
themselves; any other port (a database's, a cache's) must be listed with the host.

Link-local, cloud-metadata, unspecified, multicast and broadcast addresses are never a target,
whatever the allowlist says, nor are their IPv6 forms (IPv4-mapped, IPv4-compatible, NAT64, 6to4,
Teredo): the IPv4 address an IPv6 one embeds is checked by the same rules. Loopback only when the
allowlist names the host exactly (a wildcard entry never opens loopback, so a public name that
suddenly resolves to 127.0.0.1 is refused). The run then pins the addresses it checked, so the
name cannot resolve elsewhere between the check and the test; k6 is also told not to follow
redirects (see :mod:`gates.loadtest.k6`).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

ALLOWED_SCHEMES = ("http", "https")
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean…
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
    )
)
# Ports an allowlist entry without a port opens, besides the scenario's own.
DEFAULT_PORTS = (80, 443)
BROADCAST = ipaddress.IPv4Address("255.255.255.255")
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
METADATA_NAMES = frozenset(
    {"metadata.google.internal", "metadata", "instance-data", "instance-data.ec2.internal"}
)


class TargetRefused(ValueError):
    """A target URL the gate will not load-test."""


@dataclass(frozen=True)
class Target:
    """A checked target: its host and port, and the addresses the test may connect to."""

    url: str
    host: str
    port: int
    addresses: tuple[str, ...]


def split_entry(entry: str) -> tuple[str, int | None]:
    """An allowlist entry as (host pattern, port or None): ``host``, ``host:8080``, ``[::1]:8080``.
    A bare IPv6 address (``::1``) has no port; write it in brackets to give one."""
    entry = entry.strip()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if port.isdigit() else None
    host, colon, port = entry.rpartition(":")
    if colon and ":" not in host and port.isdigit():
        return host, int(port)
    return entry, None


def _host_matches(host: str, pattern: str) -> bool:
    pattern = pattern.lower().rstrip(".")
    if "*" in pattern:
        return fnmatchcase(host, pattern) and host.count(".") == pattern.count(".")
    return host == pattern


def host_allowed(host: str, allowlist: list[str], port: int | None = None, configured_ports=()) -> bool:
    """Exact host names, or wildcards such as ``*.vercel.app`` (which do not match ``vercel.app``
    itself, nor a deeper ``a.b.vercel.app`` unless written ``*.*.vercel.app``).

    With a port: an entry that names a port allows that port only; one that does not allows
    :data:`DEFAULT_PORTS` and ``configured_ports`` (the scenario's own)."""
    host = host.lower().rstrip(".")
    for entry in allowlist:
        pattern, entry_port = split_entry(entry)
        if not _host_matches(host, pattern):
            continue
        if port is None:
            return True
        if entry_port is None and (port in DEFAULT_PORTS or port in configured_ports):
            return True
        if entry_port == port:
            return True
    return False


def url_port(url: str) -> int | None:
    """The port a URL connects to (its scheme's default when it names none); None when it has no
    usable one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if port:
        return port
    return {"http": 80, "https": 443}.get(parts.scheme)


def ports_of(*urls: str) -> tuple[int, ...]:
    """The ports of the configured URLs given (empty or unusable ones are skipped): what an
    allowlist entry without a port opens besides 80 and 443."""
    return tuple(port for port in (url_port(url) for url in urls if url) if port)


def check_target_url(url: str, allowlist: list[str], configured_ports: Iterable[int] = ()) -> str:
    """The URL's host when its scheme, host and port are acceptable; raises TargetRefused saying
    why. ``configured_ports``: the ports of the scenario's own target and reference URLs."""
    parts = urlsplit(url)
    if parts.scheme not in ALLOWED_SCHEMES:
        raise TargetRefused(f"only http and https targets are allowed, not {parts.scheme or 'no scheme'!r}")
    try:
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise TargetRefused(f"the target URL {url!r} has an invalid port") from None
    if not host:
        raise TargetRefused(f"the target URL {url!r} has no host")
    if parts.username or parts.password:
        raise TargetRefused("the target URL must not carry credentials")
    if host.lower().rstrip(".") in METADATA_NAMES:
        raise TargetRefused(f"host {host!r} is a cloud metadata service")
    if not host_allowed(host, allowlist):
        allowed = ", ".join(allowlist) or "nothing yet"
        raise TargetRefused(f"host {host!r} is not in the project's allowlist ({allowed})")
    port = url_port(url)
    if not host_allowed(host, allowlist, port, tuple(configured_ports)):
        shown = f"[{host}]" if ":" in host else host
        raise TargetRefused(
            f"port {port} of host {host!r} is not allowed: a host listed without a port allows "
            f"{', '.join(map(str, DEFAULT_PORTS))} and the scenario's own target port; list "
            f"{shown}:{port!r} in the allowlist to test it"
        )
    return host


def embedded_ipv4(address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries: IPv4-mapped (``::ffff:a.b.c.d``),
    IPv4-compatible (``::a.b.c.d``), NAT64 (``64:ff9b::a.b.c.d``), 6to4 (``2002:AABB:CCDD::``)
    and Teredo (server and client). ``::`` and ``::1`` are IPv6's own and carry none."""
    if address.version != 6:
        return []
    found = []
    if address.ipv4_mapped:
        found.append(address.ipv4_mapped)
    if address in IPV4_COMPATIBLE and int(address) > 1:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address in NAT64_PREFIX:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.sixtofour:
        found.append(address.sixtofour)
    if address.teredo:
        found.extend(address.teredo)
    return found


def _refusal(address, host: str, loopback_ok: bool) -> str | None:
    for checked in (address, *embedded_ipv4(address)):
        shown = str(address) if checked == address else f"{address} (IPv4 {checked})"
        if checked in METADATA_ADDRESSES:
            return f"{host!r} resolves to {shown}, a cloud metadata address"
        if checked.is_link_local:
            return f"{host!r} resolves to {shown}, a link-local address"
        if checked.is_unspecified or checked.is_multicast or checked == BROADCAST:
            return f"{host!r} resolves to {shown}, which is not a host"
        if checked.is_loopback and not loopback_ok:
            return (
                f"{host!r} resolves to {shown}, a loopback address; list the host exactly "
                "(not by a wildcard) in the allowlist to test a local service"
            )
    return None


def resolve_target(
    url: str, allowlist: list[str], resolver=None, configured_ports: Iterable[int] = ()
) -> Target:
    """Check a URL and every address its host resolves to; raises TargetRefused.
    ``configured_ports``: the ports of the scenario's own target and reference URLs."""
    resolver = resolver or socket.getaddrinfo
    host = check_target_url(url, allowlist, configured_ports)
    port = url_port(url)
    try:
        answers = resolver(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise TargetRefused(f"cannot resolve {host!r}: {exc}") from None
    addresses = []
    for *_, sockaddr in answers:
        address = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
        if address.version == 6 and address.ipv4_mapped:
            address = address.ipv4_mapped
        if str(address) not in addresses:
            addresses.append(str(address))
    if not addresses:
        raise TargetRefused(f"{host!r} resolves to no address")
    exact = {split_entry(entry)[0].lower().rstrip(".") for entry in allowlist if "*" not in entry}
    loopback_ok = host.lower().rstrip(".") in exact
    for text in addresses:
        problem = _refusal(ipaddress.ip_address(text), host, loopback_ok)
        if problem:
            raise TargetRefused(problem)
    return Target(url=url, host=host, port=port, addresses=tuple(addresses))
