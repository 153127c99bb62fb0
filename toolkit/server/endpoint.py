"""Where a Triton answers: the address type every package that talks to Triton passes around.

It is a value (three ``host:port`` strings), not a process: the launcher produces one, and the CLI, the admin client,
the MME manager, the gateway and the load tester only need the addresses. Living apart from the launcher, it can be
imported without the process machinery and names nothing above it.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.errors import ServerError


@dataclass(frozen=True)
class TritonEndpoint:
    """Addresses of one Triton (embedded or external, e.g. the NGC container on a GPU host)."""

    http: str  # host:port
    grpc: str
    metrics: str

    @property
    def http_url(self) -> str:
        return f"http://{self.http}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.metrics}/metrics"

    @classmethod
    def from_url(cls, url: str, grpc: str | None = None, metrics: str | None = None) -> TritonEndpoint:
        """``http://host:8000`` -> the conventional 8001/8002 neighbours unless given."""
        hostport = url.split("://", 1)[-1].rstrip("/")
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise ServerError(f"bad Triton URL {url!r}: expected host:port or http://host:port")
        p = int(port)
        return cls(http=hostport, grpc=grpc or f"{host}:{p + 1}", metrics=metrics or f"{host}:{p + 2}")
