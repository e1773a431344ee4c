"""Which ``Host`` names the server answers to, and which page origins may change state.

A browser sends the name from the page's URL as ``Host``: a page on evil.example whose name the
attacker re-points at 127.0.0.1 (DNS rebinding) says ``Host: evil.example``. And a browser says which
page a request comes from in ``Origin``: a page of another site that POSTs here (a cross-site
request, which needs no preflight when it is a "simple" one) names that site.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from semantik.settings import Settings

LOOPBACK_NAMES = frozenset({"localhost"})
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})
DEFAULT_PORTS = {"http": 80, "https": 443}
# A Host header: a name or an address, in brackets for IPv6, and an optional port. Nothing else
# (no user info, path or spaces), so what is checked is what a URL parser would see.
_HOST = re.compile(r"^(?P<name>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(?P<port>[0-9]{1,5}))?$")


def _hostname(name: str) -> str:
    return name.strip("[]").rstrip(".").lower()


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def split_host(value: str) -> tuple[str, int | None] | None:
    """``Host`` header → (lower-case name without brackets or trailing dot, port or None); None
    when it is not a plain host[:port]."""
    match = _HOST.match(value.strip())
    if match is None:
        return None
    port = int(match["port"]) if match["port"] else None
    if port is not None and port > 65535:
        return None
    return _hostname(match["name"]), port


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, value: str) -> Origin | None:
        """An ``Origin`` header (or a URL) as scheme, host and port; None unless http(s)."""
        try:
            parts = urlsplit(value.strip())
            port = parts.port
        except ValueError:
            return None
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS or not parts.hostname or parts.username is not None:
            return None
        return cls(scheme, _hostname(parts.hostname), port or DEFAULT_PORTS[scheme])


@dataclass(frozen=True)
class HostPolicy:
    """Allowed ``Host`` names: the loopback names and addresses, SEMANTIK_HOST when it names one
    address or host, and the host of SEMANTIK_PUBLIC_URL. Bound to every interface (0.0.0.0), any
    address literal is allowed too: nobody can re-point an address, only a name."""

    names: frozenset[str]
    any_address: bool
    public: Origin | None

    @classmethod
    def from_settings(cls, settings: Settings) -> HostPolicy:
        names = set(LOOPBACK_NAMES)
        host = settings.host.strip()
        if host not in WILDCARD_HOSTS:
            names.add(_hostname(host))
        public: Origin | None = None
        url = (settings.public_url or "").strip()
        if url and "://" not in url:  # a bare host[:port]: its name, with any scheme
            bare = split_host(url)
            if bare is not None:
                names.add(bare[0])
        elif url:
            public = Origin.parse(url)
            if public is not None:
                names.add(public.host)
        return cls(frozenset(names), host in WILDCARD_HOSTS, public)

    def allows_host(self, name: str) -> bool:
        if name in self.names:
            return True
        address = _ip(name)
        return address is not None and (address.is_loopback or self.any_address)

    def allows_origin(self, origin: Origin, scheme: str, host: tuple[str, int | None] | None) -> bool:
        """The page's origin is this server as the request reached it (same scheme, host and
        port as its allowed ``Host``), or SEMANTIK_PUBLIC_URL (a proxy in front)."""
        if self.public is not None and origin == self.public:
            return True
        if host is None or scheme not in DEFAULT_PORTS:
            return False
        name, port = host
        return origin == Origin(scheme, name, port or DEFAULT_PORTS[scheme])

    def describe(self) -> str:
        return ", ".join(sorted({"localhost", "127.0.0.1", "[::1]"} | self.names))
