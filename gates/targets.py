"""Which URLs a load test may hit. Pure code (the DNS lookup aside).

A load test is a machine perfgate points at a URL and lets loose, so the URL is checked twice:
its host against the project's allowlist, and the addresses that host resolves to. Link-local
and cloud-metadata addresses are never a target, whatever the allowlist says; loopback only when
the allowlist names the host exactly (a wildcard entry never opens loopback, so a public name
that suddenly resolves to 127.0.0.1 is refused). The run then pins the addresses it checked, so
the name cannot resolve elsewhere between the check and the test.
"""

from __future__ import annotations

import ipaddress
import socket
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


def host_allowed(host: str, allowlist: list[str]) -> bool:
    """Exact host names, or wildcards such as ``*.vercel.app`` (which do not match ``vercel.app``
    itself, nor a deeper ``a.b.vercel.app`` unless written ``*.*.vercel.app``)."""
    host = host.lower().rstrip(".")
    for pattern in allowlist:
        pattern = pattern.lower().rstrip(".")
        if "*" in pattern:
            if fnmatchcase(host, pattern) and host.count(".") == pattern.count("."):
                return True
        elif host == pattern:
            return True
    return False


def check_target_url(url: str, allowlist: list[str]) -> str:
    """The URL's host when its scheme and host are acceptable; raises TargetRefused saying why."""
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
    return host


def _refusal(address, host: str, loopback_ok: bool) -> str | None:
    if address in METADATA_ADDRESSES:
        return f"{host!r} resolves to {address}, a cloud metadata address"
    if address.is_link_local:
        return f"{host!r} resolves to {address}, a link-local address"
    if address.is_unspecified or address.is_multicast:
        return f"{host!r} resolves to {address}, which is not a host"
    if address.is_loopback and not loopback_ok:
        return (
            f"{host!r} resolves to {address}, a loopback address; list the host exactly "
            "(not by a wildcard) in the allowlist to test a local service"
        )
    return None


def resolve_target(url: str, allowlist: list[str], resolver=None) -> Target:
    """Check a URL and every address its host resolves to; raises TargetRefused."""
    resolver = resolver or socket.getaddrinfo
    host = check_target_url(url, allowlist)
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
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
    exact = {entry.lower().rstrip(".") for entry in allowlist if "*" not in entry}
    loopback_ok = host.lower().rstrip(".") in exact
    for text in addresses:
        problem = _refusal(ipaddress.ip_address(text), host, loopback_ok)
        if problem:
            raise TargetRefused(problem)
    return Target(url=url, host=host, port=port, addresses=tuple(addresses))
