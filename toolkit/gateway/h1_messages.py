"""What the HTTP/1.1 server (``toolkit.gateway.h1``) hands a handler and what it writes back: ``Request``,
``Response`` and the encoding of a whole answer into one buffer.

Kept apart from the connection machinery so each file reads on its own; ``h1`` re-exports these names, which is
where the rest of the gateway imports them from.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from multidict import CIMultiDict

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


class Request:
    """What a handler sees: the subset of aiohttp's ``web.Request`` the gateway's handlers use.

    ``hmap`` maps lower-case header names to raw values (the last one wins) for the hot path; ``headers`` (a
    case-insensitive multidict of str) is built only when a handler asks for it.
    """

    __slots__ = ("_headers", "_raw_headers", "body", "hmap", "match_info", "method", "raw_path")

    def __init__(
        self, method: str, raw_path: str, raw_headers: list[tuple[bytes, bytes]], hmap: dict[bytes, bytes], body: bytes
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self._raw_headers = raw_headers
        self._headers: CIMultiDict[str] | None = None
        self.hmap = hmap
        self.body = body
        self.match_info: dict[str, str] = {}

    @property
    def headers(self) -> CIMultiDict[str]:
        if self._headers is None:
            self._headers = CIMultiDict((k.decode("latin-1"), v.decode("latin-1")) for k, v in self._raw_headers)
        return self._headers

    @property
    def path(self) -> str:
        return unquote(self.raw_path.partition("?")[0])

    @property
    def query_string(self) -> str:
        return self.raw_path.partition("?")[2]

    @property
    def content_length(self) -> int | None:
        v = self.hmap.get(b"content-length")
        return int(v) if v is not None and v.isdigit() else None

    async def read(self) -> bytes:
        return self.body


class Response:
    """A complete answer: status, headers and a bytes body (the gateway never streams an HTTP response)."""

    __slots__ = ("body", "headers", "status")

    def __init__(
        self,
        status: int = 200,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        content_type: str | None = None,
        text: str | None = None,
    ) -> None:
        self.status = status
        self.body = text.encode() if text is not None else body
        self.headers = dict(headers or {})
        if content_type is not None:
            self.headers["Content-Type"] = content_type + ("; charset=utf-8" if text is not None else "")

    @classmethod
    def json(cls, obj: Any, status: int = 200, dumps: Callable[[Any], str] = json.dumps) -> Response:
        return cls(status, dumps(obj).encode(), content_type="application/json")


def encode_headers(headers: Iterable[tuple[str, str]]) -> bytes:
    """``Name: value\\r\\n`` lines, as ``encode_response`` takes them."""
    return b"".join(f"{k}: {v}\r\n".encode("latin-1", "replace") for k, v in headers)


def encode_response(status: int, head: bytes, body: bytes, keep_alive: bool, head_only: bool = False) -> bytes:
    """The whole answer in one buffer. ``head`` holds the header lines already encoded (the hot path forwards
    Triton's as bytes); ``head_only`` (a HEAD request) keeps the GET answer's Content-Length but not its body."""
    return b"HTTP/1.1 %d %s\r\n%s%sContent-Length: %d\r\n\r\n%s" % (
        status,
        _REASONS.get(status, b"Unknown"),
        head,
        b"" if keep_alive else b"Connection: close\r\n",
        len(body),
        b"" if head_only else body,
    )
