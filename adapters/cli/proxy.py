"""``--proxy-headers``: the real client of a bot that comes through a reverse proxy.

Behind a TLS terminator or a load balancer every connection comes from the proxy; the proxy
says who the client is in ``Forwarded`` (RFC 7239: ``for=192.0.2.60`` or
``for="[2001:db8::17]:4711"``) or ``X-Forwarded-For`` (``client, proxy1, proxy2``). Those
headers are believed only from the proxies in ``--forwarded-allow-ips`` (addresses or
networks, ``*`` for any; by default only ``127.0.0.1`` and ``::1``), and the chain is read from
the right: the client is the first address that is not a trusted proxy (what uvicorn and
nginx's ``real_ip_recursive`` do), so a client cannot pass itself off as another by sending
the header itself. ``Forwarded`` wins over ``X-Forwarded-For`` when both are there.

It is computed here, in the application: the handler factory gets a
:class:`~meetstream_live.adapters.ConnectionInfo` whose ``peer`` is the real client
(``host:port``, or the host alone when the proxy gives no port), which is what the sidecar's
``peer``, the hooks' ``MEETSTREAM_PEER_*`` and the logs show.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import re
from collections.abc import Iterable, Sequence

from meetstream_live.adapters import ConnectionInfo, Handler, HandlerFactory
from meetstream_live.adapters.recording.sidecar import peer_address

__all__ = ["DEFAULT_TRUSTED", "TrustedProxies", "forwarded_client", "proxied", "trusted_list"]

log = logging.getLogger("meetstream_live.cli")

DEFAULT_TRUSTED = "127.0.0.1,::1"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_list(value: str) -> str:
    """The ``--forwarded-allow-ips`` parser: checks every entry, keeps the text."""
    TrustedProxies(value)
    return value


class TrustedProxies:
    """A set of addresses and networks (``"10.0.0.0/8, 127.0.0.1"``, or ``"*"``)."""

    def __init__(self, spec: str) -> None:
        self.any = False
        self.networks: list[Network] = []
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            if item == "*":
                self.any = True
                continue
            try:
                self.networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"not an address or a network: {item!r} "
                                 f"(examples: 127.0.0.1, 10.0.0.0/8, ::1, *)") from None

    def __contains__(self, host: object) -> bool:
        if self.any:
            return True
        if not isinstance(host, str):
            return False
        try:
            address = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


_FOR = re.compile(r'(?:^|;)\s*for\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)', re.IGNORECASE)


def _forwarded_nodes(values: Iterable[str]) -> list[str]:
    """The ``for=`` nodes of ``Forwarded`` headers, in order (RFC 7239 section 4)."""
    nodes: list[str] = []
    for value in values:
        for element in value.split(","):
            match = _FOR.search(element)
            if match is not None:
                nodes.append(match.group(1).strip('"').replace('\\"', '"'))
    return nodes


def _node(text: str) -> tuple[str | None, int | None]:
    """``192.0.2.60``, ``192.0.2.60:4711``, ``[2001:db8::17]:4711``, ``2001:db8::17``."""
    text = text.strip()
    if not text or text.lower() == "unknown" or text.startswith("_"):
        return None, None  # obfuscated or unknown (RFC 7239 section 6)
    if text.count(":") > 1 and not text.startswith("["):
        return text, None  # a bare IPv6 address (X-Forwarded-For writes them so)
    return peer_address(text)


def forwarded_client(
    peer: str, headers: Sequence[tuple[bytes, bytes]], trusted: TrustedProxies
) -> tuple[str, int | None] | None:
    """The client the trusted proxies name, or ``None`` (not from a trusted proxy, no
    header, nothing usable in it)."""
    host, _port = peer_address(peer)
    if host not in trusted:
        return None
    forwarded = [v.decode("latin-1") for k, v in headers if k.lower() == b"forwarded"]
    chain = _forwarded_nodes(forwarded)
    if not chain:
        xff = [v.decode("latin-1") for k, v in headers if k.lower() == b"x-forwarded-for"]
        chain = [item for value in xff for item in value.split(",") if item.strip()]
    if not chain:
        return None
    nodes = [_node(item) for item in chain]
    for node_host, node_port in reversed(nodes):
        if node_host is None:
            return None  # an unknown hop before a trusted one: nothing to believe
        if node_host not in trusted:
            return node_host, node_port
    first_host, first_port = nodes[0]
    return (first_host, first_port) if first_host is not None else None


def _format(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def proxied(factory: HandlerFactory, trusted: TrustedProxies) -> HandlerFactory:
    """``factory`` with each connection's ``peer`` replaced by the client the trusted
    proxies name (unchanged when there is none)."""

    def make(info: ConnectionInfo) -> Handler:
        client = forwarded_client(info.peer, info.headers, trusted)
        if client is not None:
            log.debug("%s: client %s (proxy headers)", info.peer, _format(*client),
                      extra={"peer": _format(*client), "proxy": info.peer})
            info = dataclasses.replace(info, peer=_format(*client))
        return factory(info)

    return make
