"""The HTTP/1.1 server's connection caps and closing limits (``toolkit.gateway.h1``): numbers, and the bookkeeping
that is per connection, never per request.

Why a cap: without one, a single client opens connections until the gateway runs out of file descriptors and memory,
and every other client is then refused by the kernel with no answer at all. With one, a connection over a cap still
gets a readable answer: it is accepted, its request head is read, and it is answered 503 in the API's error shape
with ``Connection: close``. Those over-cap connections are capped too (``MAX_EXCESS`` at a time, each closed
``EXCESS_GRACE_S`` after it opened if it has not sent a head): beyond that a new connection is closed at accept,
so the number of open sockets stays bounded whatever a client does.

Per client means per peer IP address. All local tests and load tests come from 127.0.0.1, so the per-client default
is twice the largest load test (256 users, one connection each). Behind a proxy or load balancer every connection
comes from a handful of addresses: there, the per-client cap should be 0 (none) and the total cap does the work.

Why a lingering close: a client refused while it is still sending (413 from Content-Length, 431, 400) would get a
TCP reset if the gateway closed with its bytes unread, and a reset can destroy the answer before the client reads
it (botocore then retries the whole 6 MiB upload). So the answer is written, our side is half-closed, and the
client's bytes are read and dropped, up to ``LINGER_S`` or about one more request's worth of bytes.
"""

from __future__ import annotations

MAX_CONNECTIONS = 4096  # in all, per listening port
MAX_CONNECTIONS_PER_CLIENT = 512  # per peer IP address; 0 = no per-client cap
MAX_EXCESS = 64  # over-cap connections waiting for their 503 at a time; beyond: closed at accept
EXCESS_GRACE_S = 2.0  # an over-cap connection that sends no head within this is closed without an answer
LINGER_S = 5.0  # after a refusal: how long the client's remaining bytes are read and dropped
REQUEST_TIMEOUT_S = 60.0  # a whole request (head and body) from its first byte; SageMaker's invocation limit

ADMITTED, EXCESS, REFUSED = 0, 1, 2


class ConnectionLimits:
    """Counts open connections in all and per client address; ``admit`` at accept, ``release`` when one closes.
    A cap of 0 means none."""

    __slots__ = ("by_client", "excess", "max_per_client", "max_total", "total")

    def __init__(self, max_total: int = MAX_CONNECTIONS, max_per_client: int = MAX_CONNECTIONS_PER_CLIENT) -> None:
        self.max_total, self.max_per_client = max_total, max_per_client
        self.total = 0
        self.excess = 0
        self.by_client: dict[str, int] = {}

    def admit(self, client: str) -> int:
        """``ADMITTED`` (counted), ``EXCESS`` (over a cap: answer 503 and close) or ``REFUSED`` (close at once)."""
        n = self.by_client.get(client, 0)
        if (self.max_total and self.total >= self.max_total) or (self.max_per_client and n >= self.max_per_client):
            if self.excess >= MAX_EXCESS:
                return REFUSED
            self.excess += 1
            return EXCESS
        self.total += 1
        self.by_client[client] = n + 1
        return ADMITTED

    def release(self, client: str, admitted: int) -> None:
        if admitted == EXCESS:
            self.excess -= 1
        elif admitted == ADMITTED:
            self.total -= 1
            n = self.by_client[client] - 1
            if n:
                self.by_client[client] = n
            else:
                del self.by_client[client]

    def reason(self, client: str) -> str:
        """Why a connection from ``client`` is over a cap, for its 503."""
        if self.max_per_client and self.by_client.get(client, 0) >= self.max_per_client:
            return f"Too many connections from {client} (limit {self.max_per_client}); retry later."
        return f"Too many connections to the gateway (limit {self.max_total}); retry later."
