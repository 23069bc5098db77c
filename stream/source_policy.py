"""Which inputs a stream added through the API may read: the server's source policy.

Whoever can reach the API can name a source, and the server opens it with its own privileges: a file path
reads any file the process can read (and a video found that way would be streamed back to the caller),
and a URL makes the server connect wherever it can reach, the cloud's metadata service at
169.254.169.254 included. So streams added with ``POST /api/streams`` and WHIP publishers are checked
against an allow-list, the ``sources:`` section of the config:

* **schemes**: ``rtsp``, ``rtsps``, ``whip`` (publishing through ``POST /whip/{id}``) and ``synthetic``
  by default. Files are not a scheme here: they are governed by the folders alone.
* **hosts** an RTSP URL may name: ``*`` (any host) by default, and CIDR networks, addresses or host names.
  Link-local addresses (169.254.0.0/16, fe80::/10) and the cloud metadata addresses are refused even
  under ``*``, unless a listed network, address or name covers them.
* **folders** a file must lie in (after symlinks and ``..`` are resolved): none by default, so the API
  opens no files at all.

Streams of the config file and of ``--source`` are the operator's choice and are not checked.

Every refusal is the same :class:`SourceRefused` with the same message (:data:`REFUSED`), whatever the
reason, so the answer tells a caller nothing about the machine. In particular a path outside the allowed
folders is refused before the file system is asked anything about it, so whether the file exists never
shows. The reason goes to the server's log, for the operator.

Host names are resolved once and every address they resolve to must be allowed (numeric spellings such as
``2852039166`` are resolved the same way, so they cannot slip past as names). Caveats: the check sees the
URL, not where the connection ends up. The source connects later and FFmpeg resolves the name again, so a
name whose answer changes between the two lookups (DNS rebinding, a very short TTL) can still lead to an
address this check never saw; and an RTSP server at an allowed address may answer with a redirect, which
FFmpeg follows. Where that matters, list networks rather than ``*`` and add cameras by address
(``rtsp://10.0.0.7/...``), which is never looked up again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from chromastream.errors import ChromastreamError

logger = logging.getLogger("chromastream.stream.source_policy")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Schemes a policy can allow. Files are allowed through folders, not through a scheme.
KNOWN_SCHEMES = ("rtsp", "rtsps", "whip", "synthetic")
DEFAULT_SCHEMES = KNOWN_SCHEMES
ANY_HOST = "*"

#: Refused under ``*``: link-local ranges (where clouds put their metadata services) and the metadata
#: addresses outside them (Alibaba Cloud's, AWS's IPv6 one).
BLOCKED_NETWORKS: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("100.100.100.200/32"),
    ipaddress.ip_network("fd00:ec2::254/128"),
)
#: Metadata services' host names, refused under ``*`` without asking DNS.
BLOCKED_NAMES = frozenset({"metadata", "metadata.google.internal", "metadata.goog", "instance-data"})

#: The one answer to every refused source (the API sends it as a 403).
REFUSED = (
    "source not allowed: this server's source policy (the 'sources' section of its config) does not "
    "permit it; the server log says why"
)

RESOLVE_TIMEOUT = 5.0
"""Seconds a host name may take to resolve before the source is refused."""

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+")
_HOST_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*")


class SourceRefused(ChromastreamError):
    """The source policy does not allow a source. The message is always :data:`REFUSED`; ``reason`` says
    why, for the server's log only."""

    def __init__(self, reason: str) -> None:
        super().__init__(REFUSED)
        self.reason = reason


@dataclass(frozen=True)
class HostEntry:
    """One entry of ``sources.hosts``: any host, a network (an address is a network of one) or a name."""

    any: bool = False
    network: IPNetwork | None = None
    name: str | None = None


def parse_host_entry(text: str) -> HostEntry:
    """``*``, a CIDR network, an address or a host name; ValueError for anything else."""
    text = text.strip()
    if text == ANY_HOST:
        return HostEntry(any=True)
    try:
        return HostEntry(network=ipaddress.ip_network(text.strip("[]"), strict=False))
    except ValueError:
        pass
    name = _normal_name(text)
    if not _HOST_NAME.fullmatch(name):
        raise ValueError(f"{text!r} is not '*', a network (10.0.0.0/8), an address or a host name")
    return HostEntry(name=name)


def _normal_name(name: str) -> str:
    return name.strip().lower().rstrip(".")


def _plain(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (``::ffff:169.254.169.254``) as the IPv4 address it stands for."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def scheme_of(url: str) -> str | None:
    """The URL scheme ``url`` starts with (lower case), or ``None`` for a file path.

    Stricter than the sources' own reading on purpose: FFmpeg takes any ``name:`` prefix as a protocol
    (``concat:``, ``subfile:``), so a text that starts like a scheme is a URL here even without ``//``.
    """
    head, colon, _ = url.partition(":")
    return head.lower() if colon and _SCHEME.fullmatch(head) else None


class SourcePolicy:
    """The allow-list for sources added through the API; build it once per server."""

    def __init__(
        self,
        schemes: Iterable[str] = DEFAULT_SCHEMES,
        hosts: Iterable[str] = (ANY_HOST,),
        folders: Iterable[Path] = (),
    ) -> None:
        self.schemes = frozenset(s.lower() for s in schemes)
        unknown = self.schemes - set(KNOWN_SCHEMES)
        if unknown:
            raise ValueError(f"unknown scheme(s) {sorted(unknown)}; known: {', '.join(KNOWN_SCHEMES)}")
        entries = [parse_host_entry(h) for h in hosts]
        self.any_host = any(e.any for e in entries)
        self.networks = tuple(e.network for e in entries if e.network is not None)
        self.names = frozenset(e.name for e in entries if e.name is not None)
        # Each folder as written (absolute) and with its symlinks resolved: a path is checked as given
        # before the file system is touched, then again once resolved.
        self.folders = tuple(Path(os.path.abspath(f)) for f in folders)
        self.real_folders = tuple(Path(os.path.realpath(f)) for f in folders)

    def allows_scheme(self, scheme: str) -> bool:
        return scheme.lower() in self.schemes

    async def check(self, url: str) -> str:
        """The text to open for ``url`` if the policy allows it, else :class:`SourceRefused`.

        A file comes back as its resolved absolute path, so what is opened is exactly what was checked
        (no later reading relative to another working directory, no ``..``); anything else unchanged.
        """
        scheme = scheme_of(url)
        if scheme is None:
            return self._check_file(url)
        if scheme == "file":
            parts = urlsplit(url)
            if parts.netloc not in ("", "localhost"):
                raise SourceRefused("a file URL with a remote host")
            return self._check_file(url2pathname(parts.path))
        if scheme not in self.schemes:
            raise SourceRefused(f"scheme {scheme}: not among sources.schemes")
        if scheme in ("rtsp", "rtsps"):
            await self._check_host(url)
        return url

    # --- files ------------------------------------------------------------------------------------

    def _check_file(self, path: str) -> str:
        if not self.folders:
            raise SourceRefused("a file, and sources.folders allows none")
        try:
            given = Path(os.path.abspath(path))
            if not any(given.is_relative_to(f) for f in (*self.folders, *self.real_folders)):
                raise SourceRefused("a file outside sources.folders")
            real = Path(os.path.realpath(given))
        except ValueError:  # a NUL byte in the path
            raise SourceRefused("a file path that cannot be a file name") from None
        if not any(real.is_relative_to(f) for f in self.real_folders):
            raise SourceRefused("a file that resolves (symlink) outside sources.folders")
        return str(real)

    # --- hosts ------------------------------------------------------------------------------------

    async def _check_host(self, url: str) -> None:
        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port
        except ValueError:
            raise SourceRefused("a malformed URL") from None
        if not host:
            raise SourceRefused("a URL without a host")
        name = _normal_name(host)
        if name in self.names:
            return
        try:
            literal: IPAddress | None = ipaddress.ip_address(name.partition("%")[0])
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [literal]
        else:
            if name in BLOCKED_NAMES:
                raise SourceRefused(f"host {name}: a cloud metadata service")
            addresses = await _resolve(name, port)
        for address in addresses:
            if not self._allows_address(address):
                raise SourceRefused(f"host {name}: address {address} is not allowed by sources.hosts")

    def _allows_address(self, address: IPAddress) -> bool:
        address = _plain(address)
        if any(address in network for network in self.networks):
            return True
        return self.any_host and not any(address in network for network in BLOCKED_NETWORKS)


async def _resolve(name: str, port: int | None) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(name, port or 0, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT
        )
    except (OSError, TimeoutError, UnicodeError) as exc:
        raise SourceRefused(f"host {name}: cannot be resolved ({exc})") from None
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        addresses.append(ipaddress.ip_address(str(sockaddr[0]).partition("%")[0]))
    if not addresses:
        raise SourceRefused(f"host {name}: resolves to no address")
    return addresses
