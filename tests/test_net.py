"""client_ip and X-Forwarded-Proto: proxy headers count only from CDR_TRUSTED_PROXIES."""

from __future__ import annotations

import pytest
from django.test import Client, RequestFactory, override_settings

from cdrs.net import client_ip
from tests.test_logging import log_output, request_lines  # noqa: F401 - log_output is a fixture

PROXIES = ["10.0.0.5", "192.168.10.0/24"]


@pytest.mark.parametrize(
    ("trusted", "remote", "forwarded_for", "expected"),
    [
        ([], "203.0.113.7", "198.51.100.1", "203.0.113.7"),  # no proxy trusted: the peer
        ([], "127.0.0.1", "198.51.100.1", "127.0.0.1"),  # loopback is not trusted by default
        (PROXIES, "203.0.113.7", "198.51.100.1", "203.0.113.7"),  # peer is not a proxy
        (PROXIES, "10.0.0.5", "198.51.100.1", "198.51.100.1"),
        (PROXIES, "10.0.0.5", "", "10.0.0.5"),  # a proxy's own request
        # A client's own X-Forwarded-For claims are left of what the proxies appended.
        (PROXIES, "10.0.0.5", "1.2.3.4, 198.51.100.1", "198.51.100.1"),
        (PROXIES, "10.0.0.5", "198.51.100.1, 192.168.10.20", "198.51.100.1"),  # two proxies
        (PROXIES, "10.0.0.5", "junk, 198.51.100.1", "198.51.100.1"),
        (PROXIES, "10.0.0.5", "198.51.100.1, junk", "10.0.0.5"),  # stops at the bad entry
        (PROXIES, "10.0.0.5", " 2001:db8::9 ", "2001:db8::9"),
        (PROXIES, "::ffff:10.0.0.5", "198.51.100.1", "198.51.100.1"),
    ],
)
def test_client_ip_believes_x_forwarded_for_only_from_trusted_proxies(
    trusted, remote, forwarded_for, expected
):
    with override_settings(CDR_TRUSTED_PROXIES=trusted):
        request = RequestFactory().get("/", REMOTE_ADDR=remote, HTTP_X_FORWARDED_FOR=forwarded_for)
        assert client_ip(request) == expected


@pytest.mark.parametrize(
    ("remote", "secure"), [("10.0.0.5", True), ("203.0.113.7", False), ("127.0.0.1", False)]
)
def test_x_forwarded_proto_counts_only_from_a_trusted_proxy(remote, secure):
    with override_settings(
        CDR_TRUSTED_PROXIES=PROXIES,
        SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"),
        SECURE_SSL_REDIRECT=True,
    ):
        response = Client().get("/api/cdrs", REMOTE_ADDR=remote, HTTP_X_FORWARDED_PROTO="https")
    # Believed: the request is HTTPS, the API answers (401 without a token); not believed:
    # a plain-HTTP request, redirected to HTTPS.
    assert response.status_code == (401 if secure else 301)


def test_a_malformed_trusted_proxy_list_is_refused():
    from django.core.exceptions import ImproperlyConfigured

    with override_settings(CDR_TRUSTED_PROXIES=["10.0.0.300"]), pytest.raises(ImproperlyConfigured):
        client_ip(RequestFactory().get("/", REMOTE_ADDR="10.0.0.5"))


@pytest.mark.parametrize(
    ("remote", "logged"), [("10.0.0.5", "198.51.100.1"), ("203.0.113.7", "203.0.113.7")]
)
def test_the_request_log_names_the_client_a_trusted_proxy_vouches_for(
    log_output,  # noqa: F811
    remote,
    logged,
):
    with override_settings(CDR_TRUSTED_PROXIES=PROXIES):
        Client().get("/healthz", REMOTE_ADDR=remote, HTTP_X_FORWARDED_FOR="198.51.100.1")
    (line,) = request_lines(log_output())
    assert line["client_ip"] == logged
