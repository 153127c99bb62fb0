"""Read a YAML file that may be hostile: bounded in bytes, nesting and alias expansion, UTF-8 only, one-line errors.

Why: ``yaml.safe_load`` is safe against code execution, not against cost. PyYAML's composer recurses once per nesting
level, so 100,000 ``[`` end in a ``RecursionError`` traceback; and aliases share nodes, so a one-kilobyte "billion
laughs" loads instantly and explodes later, in whatever walks the data as a tree (pydantic, ``json.dumps`` of an
ensemble's options, a 5 GB config.pbtxt). So the limits are counted while composing, with every alias counted as the
size and height of what it stands for: the document is refused at the first node past a limit, before anything
downstream sees it, and the work done up to that point is bounded by the byte limit.

The limits are far above what a manifest needs (the example manifest is 6 KB, about 500 nodes and 8 levels deep) and
below what costs seconds: PyYAML's pure-Python parser reads roughly 100 KB/s on a busy core.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from toolkit.errors import TritonctlError

MAX_BYTES = 1 << 20  # 1 MiB: thousands of models
MAX_DEPTH = 64  # nesting levels, aliases expanded (a manifest uses about 8)
MAX_NODES = 250_000  # scalars + sequences + mappings, aliases expanded


class YamlInputError(TritonctlError):
    """A file that cannot be read as bounded YAML. ``where`` is ``<file>`` (bytes, encoding) or ``<yaml>`` (syntax,
    limits); ``line`` is 1-based or None. The message never quotes the file's content."""

    def __init__(self, where: str, line: int | None, message: str) -> None:
        self.where, self.line, self.message = where, line, message
        super().__init__(f"line {line or '?'}: {message}")


def read_text(path: Path, max_bytes: int = MAX_BYTES) -> str:
    """The file as UTF-8 text (a BOM is allowed); bytes are counted before they are decoded."""
    try:
        with path.open("rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise YamlInputError("<file>", None, f"cannot read: {exc.strerror or exc}") from None
    if len(raw) > max_bytes:
        raise YamlInputError("<file>", None, f"larger than {max_bytes} bytes; a manifest never needs that much")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise YamlInputError(
            "<file>", line, f"not UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start} ({exc.reason})"
        ) from None


def _refused(problem: str, mark: Any) -> yaml.MarkedYAMLError:
    return yaml.MarkedYAMLError(None, None, problem, mark)


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer counts, per node, its size and height with aliases expanded, and stops at a limit.

    ``_open`` holds ``[size, height]`` of the children composed so far of each node still being composed (the path
    from the root); ``_anchored`` holds the final ``(size, height)`` of each anchored node once it is complete, which
    is what an alias to it adds. An alias to a node still open is a cycle (``&a [*a]``): refused, a manifest is a
    tree."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._open: list[list[int]] = []
        self._anchored: dict[int, tuple[int, int]] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None and id(target) not in self._anchored:
                raise _refused(f"alias *{event.anchor} is inside its own anchor", event.start_mark)
            node = super().compose_node(parent, index)  # an undefined alias raises here
            self._account(*self._anchored[id(node)], event.start_mark)
            return node
        if len(self._open) >= MAX_DEPTH:
            raise _refused(f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        self._open.append([0, 0])
        node = super().compose_node(parent, index)
        size, height = self._open.pop()
        stats = (size + 1, height + 1)
        if event.anchor is not None:
            self._anchored[id(node)] = stats
        self._account(*stats, event.start_mark)
        return node

    def _account(self, size: int, height: int, mark: Any) -> None:
        if len(self._open) + height > MAX_DEPTH:
            raise _refused(f"nested deeper than {MAX_DEPTH} levels once aliases are expanded", mark)
        total = size
        if self._open:
            here = self._open[-1]
            here[0] += size
            here[1] = max(here[1], height)
            total = here[0]
        if total > MAX_NODES:
            raise _refused(f"more than {MAX_NODES} nodes once aliases are expanded (a YAML bomb?)", mark)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """A scalar PyYAML cannot convert raises a plain exception (``int()`` of 5,000 digits, the 13th month, an
        explicit ``!!timestamp`` on a word): make it a YAML error with the node's line."""
        try:
            return super().construct_object(node, deep)
        except (ArithmeticError, AttributeError, LookupError, TypeError, ValueError) as exc:
            kind = str(node.tag).rsplit(":", 1)[-1]
            reason = str(exc).split(";")[0] if isinstance(exc, ValueError) else "malformed"  # not int()'s advice
            raise _refused(f"cannot read this {kind} value: {reason}", node.start_mark) from None


def parse(text: str) -> tuple[Any, yaml.Node | None]:
    """One YAML document: its data and its composed node tree (for line numbers). Merge keys (``<<``) are flattened
    in the tree as in the data, so a key's last occurrence in a mapping node is the one the data holds."""
    loader = None
    try:
        loader = _BoundedLoader(text)  # the reader checks every character here
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.reader.ReaderError as exc:  # a character YAML forbids (NUL, most C0 controls)
        message = f"character #x{exc.character:04x} (text offset {exc.position}) is not allowed in YAML"
        raise YamlInputError("<yaml>", text.count("\n", 0, exc.position) + 1, message) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None and mark.line is not None else None
        raise YamlInputError("<yaml>", line, str(exc.problem or exc.context or "invalid YAML")) from None
    except yaml.YAMLError as exc:
        raise YamlInputError("<yaml>", None, type(exc).__name__) from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, node


def load_yaml(path: Path) -> tuple[Any, yaml.Node | None]:
    """:func:`read_text` then :func:`parse`: the one entry point for YAML files a user hands tritonctl."""
    return parse(read_text(path))
