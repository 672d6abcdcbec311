"""The SSRF list, through the real API: every target URL here is refused by
``POST …/validate`` with a 400 in the error shape naming ``testConfig.targetUrl``, and nothing is
written (no validation, audit event, idempotency key or outbound call). Then a target that
redirects to a host it may not reach, run by a real worker with the real k6: the other host gets
no request.

The unit tests of the rules are in tests/gates/test_targets.py (a stand-in resolver); here the
addresses are literals and local names, resolved by the machine's own resolver as at run time.
"""

from __future__ import annotations

import http.server
import threading

import pytest

from gates.models import AuditEvent, IdempotencyKey, Run, Validation
from gates.targets import TargetRefused, resolve_target
from integrations.models import OutboundCall
from tests.conftest import Api, make_token
from tests.qcluster import qcluster, wait_for

# As wide an allowlist as an operator could write: any name of one to four labels, any IPv6 literal
# ("*"), any dotted quad ("*.*.*.*"), and the metadata address named exactly. What is refused with
# it is refused by the addresses, whatever the allowlist says.
WIDE_OPEN = ["*", "*.*", "*.*.*", "*.*.*.*", "169.254.169.254", "fd00:ec2::254"]

REFUSED_WHATEVER_THE_ALLOWLIST = [
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://169.254.170.2/v2/credentials", "cloud metadata"),
    ("http://100.100.100.200/latest/meta-data/", "cloud metadata"),
    ("http://2852039166/", "cloud metadata"),  # 169.254.169.254 in decimal
    ("http://0xa9fea9fe/", "cloud metadata"),  # ... in hex
    ("http://0251.0376.0251.0376/", "cloud metadata"),  # ... in octal
    ("http://169.254.10.10/", "link-local"),
    ("http://127.0.0.1/", "loopback"),  # not listed exactly: only wildcards match it
    ("http://127.1/", "loopback"),
    ("http://2130706433/", "loopback"),  # 127.0.0.1 in decimal
    ("http://0x7f.0.0.1/", "loopback"),
    ("http://0177.0.0.1/", "loopback"),
    ("http://017700000001/", "loopback"),
    ("http://localhost/", "loopback"),
    ("http://0.0.0.0/", "not a host"),
    ("http://0/", "not a host"),
    ("http://255.255.255.255/", "not a host"),
    ("http://224.0.0.1/", "not a host"),
    ("http://[::1]/", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://[::ffff:7f00:1]/", "loopback"),
    ("http://[::7f00:1]/", "loopback"),  # IPv4-compatible
    ("http://[64:ff9b::7f00:1]/", "loopback"),  # NAT64
    ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", "loopback"),  # Teredo, client 127.0.0.1
    ("http://[::ffff:169.254.169.254]/", "cloud metadata"),
    ("http://[::a9fe:a9fe]/", "cloud metadata"),
    ("http://[64:ff9b::a9fe:a9fe]/", "cloud metadata"),
    ("http://[2002:a9fe:a9fe::]/", "cloud metadata"),  # 6to4
    ("http://[fd00:ec2::254]/", "cloud metadata"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[::]/", "not a host"),
    ("http://[::ffff:0.0.0.0]/", "not a host"),
    ("http://[::ffff:255.255.255.255]/", "not a host"),
    ("http://[ff02::1]/", "not a host"),
    ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata"),
    ("http://metadata/computeMetadata/v1/", "cloud metadata"),
]

# The project's usual allowlist (tests/conftest.py: 127.0.0.1 and *.vercel.app; the scenario's own
# target is on port 8001): private ranges are testable only when listed, other ports only when
# listed with the host.
REFUSED_BY_THE_PROJECTS_ALLOWLIST = [
    ("http://10.0.0.5/", "allowlist"),
    ("http://172.16.0.1/", "allowlist"),
    ("http://192.168.1.1/", "allowlist"),
    ("http://100.64.0.1/", "allowlist"),
    ("http://[fc00::1]/", "allowlist"),
    ("http://vercel.app/", "allowlist"),
    ("http://a.b.vercel.app/", "allowlist"),
    ("http://127.0.0.1:6379/", "port 6379"),
    ("http://127.0.0.1:5432/", "port 5432"),
    ("http://127.0.0.1:22/", "port 22"),
    ("http://user:password@127.0.0.1:8001/", "credentials"),
    ("http://127.0.0.1:8001@169.254.169.254/", "credentials"),  # the host is what follows the @
    ("http://169.254.169.254#@127.0.0.1:8001/", "allowlist"),  # ... and what precedes the #
]


# Forms the API's URL field refuses before the allowlist is asked (numeric hosts and names without a
# dot are not URLs to Django's validator). The machine's resolver still reads them as what they hide,
# so the target checks must refuse them too: test_the_target_checks_refuse_the_whole_list.
NOT_URLS_TO_THE_API = {
    "http://2852039166/",
    "http://0xa9fea9fe/",
    "http://0251.0376.0251.0376/",
    "http://127.1/",
    "http://2130706433/",
    "http://0x7f.0.0.1/",
    "http://0177.0.0.1/",
    "http://017700000001/",
    "http://0/",
    "http://metadata/computeMetadata/v1/",
}


def validate(api, target_url: str, build_id: str = "ssrf-1", **headers):
    return api.post(
        "/api/ci-cd/performance/validate",
        {
            "project": "wedsync-web",
            "environment": "staging",
            "buildId": build_id,
            "gitHash": "d" * 40,
            "testConfig": {"targetUrl": target_url},
        },
        **headers,
    )


def assert_refused_and_nothing_written(response, reason: str) -> None:
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error"] == "invalid" and "testConfig.targetUrl" in body["fields"]
    assert reason in body["detail"], body["detail"]
    assert not Validation.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="validation.").exists()
    assert not IdempotencyKey.objects.exists()
    assert not OutboundCall.objects.exists()


@pytest.mark.parametrize(("target_url", "reason"), REFUSED_WHATEVER_THE_ALLOWLIST)
def test_forbidden_addresses_are_refused_even_by_a_wide_open_allowlist(project, target_url, reason):
    project.allowed_hosts = WIDE_OPEN
    project.save(update_fields=["allowed_hosts"])
    api = Api(make_token(project, "ci")[1])
    response = validate(api, target_url, HTTP_IDEMPOTENCY_KEY="ssrf-attempt")
    expected = "Enter a valid URL" if target_url in NOT_URLS_TO_THE_API else reason
    assert_refused_and_nothing_written(response, expected)


@pytest.mark.parametrize(("target_url", "reason"), REFUSED_WHATEVER_THE_ALLOWLIST)
def test_the_target_checks_refuse_the_whole_list(target_url, reason):
    # With the machine's own resolver, as a worker resolves the target before it runs k6.
    with pytest.raises(TargetRefused, match=reason):
        resolve_target(target_url, WIDE_OPEN)


@pytest.mark.parametrize(("target_url", "reason"), REFUSED_BY_THE_PROJECTS_ALLOWLIST)
def test_unlisted_hosts_and_ports_are_refused(ci_api, target_url, reason):
    response = validate(ci_api, target_url, HTTP_IDEMPOTENCY_KEY="ssrf-attempt")
    assert_refused_and_nothing_written(response, reason)


def counting_server(answer):
    """A loopback HTTP server in a thread that records each request's path."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            answer(self)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, hits


def answer_ok(handler):
    handler.send_response(200)
    handler.send_header("Content-Length", "2")
    handler.end_headers()
    handler.wfile.write(b"ok")


@pytest.fixture
def internal_service():
    """What a redirect must not reach: a loopback service on a port the allowlist does not open."""
    server, hits = counting_server(answer_ok)
    yield server, hits
    server.shutdown()
    server.server_close()


@pytest.fixture
def redirecting_target(internal_service):
    """An allowed target that answers every request with a redirect to the internal service."""
    internal_port = internal_service[0].server_address[1]

    def answer_redirect(handler):
        handler.send_response(302)
        handler.send_header("Location", f"http://127.0.0.1:{internal_port}/admin")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    server, hits = counting_server(answer_redirect)
    yield server, hits
    server.shutdown()
    server.server_close()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_target_that_redirects_to_an_unlisted_service_never_gets_k6_there(
    project, redirecting_target, internal_service
):
    target, target_hits = redirecting_target
    internal, internal_hits = internal_service
    project.allowed_hosts = [f"127.0.0.1:{target.server_address[1]}"]
    project.save(update_fields=["allowed_hosts"])
    api = Api(make_token(project, "ci")[1])
    response = api.post(
        "/api/ci-cd/performance/validate",
        {
            "project": "wedsync-web",
            "environment": "staging",
            "buildId": "redirect-1",
            "gitHash": "d" * 40,
            "testConfig": {
                "targetUrl": f"http://127.0.0.1:{target.server_address[1]}",
                "vus": 1,
                "duration": "5s",
            },
        },
    )
    assert response.status_code == 202, response.content

    with qcluster():
        finished = wait_for(
            lambda: (v := Validation.objects.get()).status not in ("queued", "running") and v,
            timeout=90,
            what="the redirect validation to finish",
        )

    assert target_hits, "the allowed target was load-tested"
    assert internal_hits == [], f"k6 followed the redirect to port {internal.server_address[1]}"
    assert Run.objects.filter(validation=finished).count() == 1
    assert finished.finished_at is not None
