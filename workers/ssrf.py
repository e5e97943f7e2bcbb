"""SSRF guard for webhook deliveries: check the resolved address, then connect to it.

A webhook's host is resolved when the delivery connects; if any resolved
address lies in a denied network the delivery is refused (a permanent
failure). Otherwise the socket is opened to the address that was checked,
not to a second DNS answer, so DNS rebinding between check and connect is
not possible. TLS still verifies the certificate (and sends SNI) for the
URL's host name.

Works by giving requests a transport adapter whose urllib3 connections set
the address to dial (urllib3's ``_dns_host``) to the checked one. The same
connections hand their socket to the attempt's deadline (``workers.deadline``).
"""

import ipaddress
import socket

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from workers import deadline


class DeniedDestination(Exception):
    """The webhook host resolves to an address in a denied network."""


def check_address(address, deny):
    """Raise :class:`DeniedDestination` when ``address`` (text) is in a network of ``deny``."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    for network in deny:
        if ip.version == network.version and ip in network:
            raise DeniedDestination(f"destination {ip} is in the denied network {network}")


def resolve_checked(host, port, deny):
    """Resolve ``host`` and check every address it has.

    Returns:
        the first address (text) to connect to.
    Raises:
        DeniedDestination: any address is denied.
        socket.gaierror: the name does not resolve.
    """
    infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    addresses = [info[4][0] for info in infos]
    for address in addresses:
        check_address(address, deny)
    return addresses[0]


class _Guarded:
    deny = ()

    def _new_conn(self):
        # Dial the checked address; self.host stays the name (Host header, SNI, cert check).
        self._dns_host = resolve_checked(self.host, self.port, self.deny)
        sock = super()._new_conn()
        # The attempt's deadline can cut this socket from now on; a TLS socket
        # replaces it once its handshake is done (bounded per operation by the
        # connect timeout), and request() hands that one over.
        deadline.watch(sock)
        return sock

    def request(self, *args, **kwargs):
        # A reused keep-alive connection: its socket serves this attempt now.
        deadline.watch(self.sock)
        return super().request(*args, **kwargs)


def guarded_adapter(deny):
    """A requests ``HTTPAdapter`` whose connections refuse addresses in ``deny``.

    Args:
        deny: list of ``ipaddress`` networks.
    """

    class GuardedHTTPConnection(_Guarded, HTTPConnection):
        pass

    class GuardedHTTPSConnection(_Guarded, HTTPSConnection):
        pass

    GuardedHTTPConnection.deny = GuardedHTTPSConnection.deny = tuple(deny)

    class GuardedHTTPConnectionPool(HTTPConnectionPool):
        ConnectionCls = GuardedHTTPConnection

    class GuardedHTTPSConnectionPool(HTTPSConnectionPool):
        ConnectionCls = GuardedHTTPSConnection

    class GuardedAdapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {
                "http": GuardedHTTPConnectionPool, "https": GuardedHTTPSConnectionPool}

    return GuardedAdapter()
