"""What a load test may hit: the allowlist, the scheme, and the addresses a host resolves to."""

import socket

import pytest

from gates.models import Validation
from gates.targets import TargetRefused, check_target_url, resolve_target

ALLOWLIST = ["127.0.0.1", "staging.wedsync.example", "*.vercel.app"]


def resolver(answers: dict[str, list[str]]):
    """A stand-in DNS: name → addresses, as getaddrinfo answers."""

    def getaddrinfo(host, port, type=None):  # noqa: A002 - getaddrinfo's own signature
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        family = {4: socket.AF_INET, 6: socket.AF_INET6}
        return [(family[6 if ":" in a else 4], socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    return getaddrinfo


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://staging.wedsync.example/", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("gopher://127.0.0.1:70/", "only http and https"),
        ("http://evil.example/", "not in the project's allowlist"),
        ("http://user:secret@staging.wedsync.example/", "credentials"),
        ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata"),
        ("http://staging.wedsync.example:99999/", "invalid port"),
    ],
)
def test_odd_schemes_unlisted_hosts_and_metadata_names_are_refused(url, message):
    with pytest.raises(TargetRefused, match=message):
        resolve_target(url, ALLOWLIST, resolver=resolver({}))


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("169.254.10.10", "link-local"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "not a host"),  # noqa: S104 - an answer the resolver gives, not a bind
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("::a9fe:a9fe", "cloud metadata"),  # IPv4-compatible
        ("64:ff9b::a9fe:a9fe", "cloud metadata"),  # NAT64
        ("2002:a9fe:a9fe::", "cloud metadata"),  # 6to4
        ("::7f00:1", "loopback"),  # IPv4-compatible 127.0.0.1, behind a wildcard entry
        ("::ffff:127.0.0.1", "loopback"),
        ("64:ff9b::a9fe:0a0a", "link-local"),
        ("255.255.255.255", "not a host"),
        ("::ffff:255.255.255.255", "not a host"),
        ("64:ff9b::e000:1", "not a host"),  # NAT64 of multicast 224.0.0.1
    ],
)
def test_an_allowed_name_that_resolves_to_a_forbidden_address_is_refused(address, message):
    dns = resolver({"preview-1.vercel.app": ["76.76.21.21", address]})
    with pytest.raises(TargetRefused, match=message):
        resolve_target("https://preview-1.vercel.app/", ALLOWLIST, resolver=dns)


def test_metadata_is_refused_even_when_the_allowlist_names_it():
    with pytest.raises(TargetRefused, match="cloud metadata"):
        resolve_target(
            "http://169.254.169.254/latest/meta-data/", ["169.254.169.254"], resolver=socket.getaddrinfo
        )


def test_loopback_needs_the_host_listed_exactly_not_a_wildcard():
    dns = resolver({"sneaky.vercel.app": ["127.0.0.1"], "127.0.0.1": ["127.0.0.1"]})
    with pytest.raises(TargetRefused, match="loopback"):
        resolve_target("http://sneaky.vercel.app/", ALLOWLIST, resolver=dns)
    target = resolve_target("http://127.0.0.1:8001/", ALLOWLIST, resolver=dns, configured_ports=(8001,))
    assert (target.host, target.port, target.addresses) == ("127.0.0.1", 8001, ("127.0.0.1",))


def test_an_ipv6_address_that_embeds_no_forbidden_ipv4_passes():
    dns = resolver(
        {"preview-1.vercel.app": ["2606:4700::6810:84e5", "64:ff9b::4c4c:1515", "2002:4c4c:1515::1"]}
    )
    target = resolve_target("https://preview-1.vercel.app/", ALLOWLIST, resolver=dns)
    assert target.addresses == ("2606:4700::6810:84e5", "64:ff9b::4c4c:1515", "2002:4c4c:1515::1")


def test_embedded_loopback_is_allowed_when_the_host_is_listed_exactly_like_plain_loopback():
    dns = resolver({"local.test": ["::7f00:1"]})
    target = resolve_target("http://local.test/", ["local.test"], resolver=dns)
    assert target.addresses == ("::7f00:1",)


@pytest.mark.parametrize("port", [6379, 5432, 22, 8443])
def test_a_host_listed_without_a_port_does_not_open_its_other_services(port):
    dns = resolver({"staging.wedsync.example": ["203.0.113.7"]})
    with pytest.raises(TargetRefused, match=f"port {port} of host 'staging.wedsync.example' is not allowed"):
        resolve_target(f"http://staging.wedsync.example:{port}/", ALLOWLIST, resolver=dns)


def test_a_host_listed_without_a_port_allows_80_443_and_the_scenarios_own_ports():
    dns = resolver({"staging.wedsync.example": ["203.0.113.7"], "127.0.0.1": ["127.0.0.1"]})
    for url in ("http://staging.wedsync.example/", "https://staging.wedsync.example:443/"):
        assert resolve_target(url, ALLOWLIST, resolver=dns).host == "staging.wedsync.example"
    own = (8001, 9002)  # the scenario's targetUrl and referenceUrl
    for port in own:
        target = resolve_target(f"http://127.0.0.1:{port}/", ALLOWLIST, resolver=dns, configured_ports=own)
        assert target.port == port
    with pytest.raises(TargetRefused, match="port 6379"):
        resolve_target("http://127.0.0.1:6379/", ALLOWLIST, resolver=dns, configured_ports=own)


def test_an_entry_with_a_port_allows_that_port_only():
    allowlist = ["staging.wedsync.example:8443", "*.vercel.app:8080", "[::1]:9000"]
    assert check_target_url("https://staging.wedsync.example:8443/", allowlist) == "staging.wedsync.example"
    assert check_target_url("http://pr-1.vercel.app:8080/", allowlist) == "pr-1.vercel.app"
    assert check_target_url("http://[::1]:9000/", allowlist) == "::1"
    for url in (
        "https://staging.wedsync.example/",  # 443: not opened by an entry that names 8443
        "http://staging.wedsync.example:6379/",
        "http://pr-1.vercel.app/",
        "http://[::1]:9001/",
    ):
        with pytest.raises(TargetRefused, match="is not allowed"):
            check_target_url(url, allowlist, configured_ports=(6379, 9001))
    with pytest.raises(TargetRefused, match="not in the project's allowlist"):
        check_target_url("http://vercel.app:8080/", allowlist)


def test_an_exact_entry_with_a_port_still_opens_loopback():
    dns = resolver({"127.0.0.1": ["127.0.0.1"]})
    target = resolve_target("http://127.0.0.1:6380/", ["127.0.0.1:6380"], resolver=dns)
    assert (target.port, target.addresses) == (6380, ("127.0.0.1",))


def test_an_unresolvable_host_is_refused_clearly():
    with pytest.raises(TargetRefused, match="cannot resolve"):
        resolve_target("https://staging.wedsync.example/", ALLOWLIST, resolver=resolver({}))


def test_a_public_address_passes_and_is_pinned():
    dns = resolver({"staging.wedsync.example": ["203.0.113.7", "203.0.113.7"]})
    target = resolve_target("https://staging.wedsync.example/api", ALLOWLIST, resolver=dns)
    assert (target.port, target.addresses) == (443, ("203.0.113.7",))


@pytest.mark.parametrize(
    ("target_url", "message"),
    [
        ("http://169.254.169.254/latest/meta-data/", "allowlist"),
        ("http://10.0.0.5/", "allowlist"),
        ("ftp://127.0.0.1/", "only http and https"),
        ("javascript:alert(1)", "valid URL"),
    ],
)
def test_the_api_refuses_such_targets_with_a_clear_400(ci_api, target_url, message):
    response = ci_api.post(
        "/api/ci-cd/performance/validate",
        {
            "project": "wedsync-web",
            "environment": "staging",
            "buildId": "b-1",
            "gitHash": "a" * 40,
            "testConfig": {"targetUrl": target_url},
        },
    )
    assert response.status_code == 400, response.content
    data = response.json()
    assert data["error"] == "invalid" and "testConfig.targetUrl" in data["fields"]
    assert message in data["detail"] or message in str(data["fields"])
    assert not Validation.objects.exists()


def test_the_api_refuses_an_allowed_name_that_resolves_to_metadata(ci_api, project, monkeypatch):
    project.allowed_hosts = [*project.allowed_hosts, "*.preview.example"]
    project.save(update_fields=["allowed_hosts"])
    monkeypatch.setattr(socket, "getaddrinfo", resolver({"pr-42.preview.example": ["169.254.169.254"]}))
    response = ci_api.post(
        "/api/ci-cd/performance/validate",
        {
            "project": "wedsync-web",
            "environment": "staging",
            "buildId": "b-1",
            "gitHash": "a" * 40,
            "testConfig": {"targetUrl": "http://pr-42.preview.example/"},
        },
    )
    assert response.status_code == 400
    assert "cloud metadata" in response.json()["detail"]
