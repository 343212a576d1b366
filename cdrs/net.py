"""Who the client is: the peer address, or what a trusted proxy says (CDR_TRUSTED_PROXIES).

Proxy headers (X-Forwarded-For, X-Forwarded-Proto) are anyone's to forge, so they count only
when the request comes from one of the proxies listed in CDR_TRUSTED_PROXIES (IP addresses
or CIDR networks; empty by default: no proxy is trusted and the peer address is the client).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(items: Iterable[str], *, setting: str) -> tuple[IPNetwork, ...]:
    """IP addresses or CIDR networks (blank items skipped); ImproperlyConfigured, naming
    ``setting``, for anything else."""
    networks: list[IPNetwork] = []
    for item in items:
        if not item.strip():
            continue
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"{setting}: {item.strip()!r} is not an IP address or CIDR network"
            ) from exc
    return tuple(networks)


@functools.lru_cache(maxsize=8)
def _networks(raw: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return parse_networks(raw, setting="CDR_TRUSTED_PROXIES")


def trusted_proxy_networks() -> tuple[IPNetwork, ...]:
    return _networks(tuple(getattr(settings, "CDR_TRUSTED_PROXIES", ())))


def _parse(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted_proxy(address: str) -> bool:
    networks = trusted_proxy_networks()
    if not networks:  # the default: no address to parse (several times a request)
        return False
    parsed = _parse(address)
    return parsed is not None and any(parsed in net for net in networks)


def client_ip(request: HttpRequest) -> str:
    """The client's IP address, as text.

    The peer address (REMOTE_ADDR), unless the peer is a trusted proxy: then the right-most
    X-Forwarded-For entry that is not itself a trusted proxy (entries to its left are the
    client's own claims, anyone's to forge). A malformed entry ends the walk at the last
    address that could be trusted.
    """
    peer = request.META.get("REMOTE_ADDR", "")
    if not is_trusted_proxy(peer):
        return peer
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    found = peer
    for entry in reversed([item for item in forwarded.split(",") if item.strip()]):
        parsed = _parse(entry)
        if parsed is None:
            break
        found = str(parsed)
        if not is_trusted_proxy(found):
            break
    return found
