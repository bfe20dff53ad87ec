"""The caller's address, and allow-list checks on it."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from django.conf import settings
from django.http import HttpRequest

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_ip(request: HttpRequest) -> str:
    """The client's address: REMOTE_ADDR, or the entry our own proxies added to X-Forwarded-For.

    Only the last NUM_PROXIES entries of X-Forwarded-For were written by proxies we run; anything
    to their left is whatever the client sent, so it is never trusted.
    """
    remote = str(request.META.get("REMOTE_ADDR", ""))
    if settings.NUM_PROXIES <= 0:
        return remote
    forwarded = [
        part.strip()
        for part in str(request.META.get("HTTP_X_FORWARDED_FOR", "")).split(",")
        if part.strip()
    ]
    if len(forwarded) < settings.NUM_PROXIES:
        return remote
    return str(forwarded[-int(settings.NUM_PROXIES)])


def ip_in_networks(address: str, networks: Sequence[IPNetwork]) -> bool:
    """Whether `address` parses and lies in one of `networks` (unparseable means no)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)
