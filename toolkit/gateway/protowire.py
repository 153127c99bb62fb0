"""The model name of a serialized KServe gRPC request, read the way protobuf reads it, as its bytes arrive.

Why hand-written: the gateway decides policy and lazy loading from a request's model name without decoding its
tensors, and the frame-forwarding front sees a message in pieces. Why so strict: protobuf (and so Triton) takes the
*last* occurrence of a field, so a scanner that stops at the first ``model_name`` authorizes one model while Triton
runs another. This one walks every top-level field of the message (skipping values by their length, so a 6 MiB
tensor costs a few steps) and refuses what could make the two readings differ:

- field 1 (``model_name``) twice, or with a wire type other than length-delimited;
- anything protobuf itself would reject: field number 0 or above 2**29-1, a group or unknown wire type, a varint
  longer than 10 bytes, a length past the end of the message, a name that is not UTF-8.

Every name this scanner returns is the one ``ModelInferRequest.FromString`` returns for the same bytes (tested
differentially with generated messages); it may refuse a few messages protobuf would accept, never the reverse.
"""

from __future__ import annotations

from toolkit.gateway.errors import ValidationError

MAX_NAME_BYTES = 1024  # a model name longer than this is refused (Triton's names are directory names)

# states of the scanner between feeds
_KEY, _VARINT, _LENGTH, _SKIP, _NAME = range(5)


class ProtoError(ValidationError):
    """The bytes are not a request the gateway can read the model name of unambiguously (INVALID_ARGUMENT)."""


class NameScanner:
    """Feed a message's bytes in order (``feed``), then ``finish`` at its end.

    ``model`` is the name once field 1 has been read whole (None before): the policy may decide then, but the
    message is safe to forward only up to the last byte ``feed`` accepted, and whole only after ``finish``.
    """

    __slots__ = ("_acc", "_field", "_name", "_need", "_shift", "_state", "model")

    def __init__(self) -> None:
        self.model: str | None = None
        self._state = _KEY
        self._acc = 0  # the varint being read (key, value or length)
        self._shift = 0
        self._need = 0  # bytes still to skip (_SKIP) or to read into the name (_NAME)
        self._name = bytearray()
        self._field = 0  # the length-delimited field whose length is being read

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Consume the next bytes; ProtoError as soon as they make the message unreadable or ambiguous."""
        i, n = 0, len(data)
        state = self._state
        while i < n:
            if state == _SKIP:
                take = min(self._need, n - i)
                self._need -= take
                i += take
                if self._need == 0:
                    state = _KEY
                continue
            if state == _NAME:
                take = min(self._need, n - i)
                self._name += data[i : i + take]
                self._need -= take
                i += take
                if self._need == 0:
                    self._set_name()
                    state = _KEY
                continue
            # _KEY, _VARINT, _LENGTH: one varint byte at a time
            b = data[i]
            i += 1
            if self._shift >= (35 if state == _KEY else 70) or (self._shift == 63 and b > 1):
                raise ProtoError("varint too long")
            self._acc |= (b & 0x7F) << self._shift
            if b & 0x80:
                self._shift += 7
                continue
            value, self._acc, self._shift = self._acc, 0, 0
            if state == _KEY:
                state = self._key(value)
            elif state == _VARINT:
                state = _KEY
            else:  # _LENGTH
                state = self._length(value)
        self._state = state

    def _key(self, key: int) -> int:
        if key > 0xFFFFFFFF:
            raise ProtoError("field key out of range")
        field, wire = key >> 3, key & 7
        if field == 0:  # (a key below 2**32 has a field number below 2**29: protobuf's largest is 2**29 - 1)
            raise ProtoError(f"invalid field number {field}")
        if field == 1:
            if wire != 2:
                raise ProtoError("model_name (field 1) must be a string")
            if self.model is not None or self._name:
                raise ProtoError("model_name (field 1) appears more than once")
        if wire == 0:
            return _VARINT
        if wire == 1:
            self._need = 8
            return _SKIP
        if wire == 5:
            self._need = 4
            return _SKIP
        if wire == 2:
            self._field = field
            return _LENGTH
        raise ProtoError(f"unsupported wire type {wire}")

    def _length(self, size: int) -> int:
        if self._field == 1:
            if size > MAX_NAME_BYTES:
                raise ProtoError(f"model name longer than {MAX_NAME_BYTES} bytes")
            self._need = size
            if size == 0:
                self._set_name()
                return _KEY
            return _NAME
        if size == 0:
            return _KEY
        self._need = size
        return _SKIP

    def _set_name(self) -> None:
        try:
            self.model = self._name.decode()
        except UnicodeDecodeError:
            raise ProtoError("model name is not UTF-8") from None

    def finish(self) -> str:
        """The message ended here: its model name ("" when it has none), or ProtoError if a field is cut short."""
        if self._state != _KEY or self._shift:
            raise ProtoError("message ends inside a field")
        return self.model or ""


def model_of(body: bytes | bytearray | memoryview) -> str:
    """The model name of a whole serialized request (protobuf's reading, or ProtoError)."""
    s = NameScanner()
    s.feed(body)
    return s.finish()
