"""Which URLs a load test may hit: the project's host allowlist. Pure code."""

from fnmatch import fnmatchcase
from urllib.parse import urlsplit

ALLOWED_SCHEMES = ("http", "https")


class TargetRefused(ValueError):
    """A target URL the gate will not load-test."""


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
    """The URL's host when the URL may be load-tested; raises TargetRefused saying why not."""
    parts = urlsplit(url)
    if parts.scheme not in ALLOWED_SCHEMES:
        raise TargetRefused(f"only http and https targets are allowed, not {parts.scheme or 'no scheme'!r}")
    host = parts.hostname
    if not host:
        raise TargetRefused(f"the target URL {url!r} has no host")
    if parts.username or parts.password:
        raise TargetRefused("the target URL must not carry credentials")
    if not host_allowed(host, allowlist):
        allowed = ", ".join(allowlist) or "nothing yet"
        raise TargetRefused(f"host {host!r} is not in the project's allowlist ({allowed})")
    return host
