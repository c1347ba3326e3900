"""The bounded YAML reader: a config costs at most a bounded amount of work, whatever
its bytes, and every refusal is one line naming the file, the line and the rule.

Built on PyYAML's own machinery (a ``SafeLoader`` subclass), not on re-parsing:

- **size**: files over ``MAX_BYTES`` are refused before parsing;
- **encoding**: UTF-8 only, without a byte-order mark; a bad byte is reported by line;
- **depth**: the composer refuses nodes nested deeper than ``MAX_DEPTH`` (3,000 nested
  ``[`` would otherwise end in a ``RecursionError``);
- **aliases**: after composing, the node graph's size *with every alias expanded* is
  counted (memoised per node, so counting costs the graph's size, not the expansion's)
  and refused above ``MAX_NODES``: a "billion laughs" bomb is refused in milliseconds;
- **duplicate keys**: a mapping that names a key twice is refused (YAML says keys are
  unique; PyYAML silently keeps the last);
- **numbers** as Python spells them: ``3e-3`` is a float and ``010`` is 10 (YAML 1.1 reads
  a string and octal 8).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

MAX_BYTES = 1 << 20  # a config of a megabyte is already a mistake
MAX_DEPTH = 64  # nesting of mappings and lists
MAX_NODES = 100_000  # scalars, lists and mappings, with aliases expanded


class YamlInputError(ValueError):
    """Input the bounded reader refuses: ``line`` (1-based, None when unknown) and ``rule``."""

    def __init__(self, rule: str, line: int | None = None):
        self.rule = rule
        self.line = line
        super().__init__(f"line {line}: {rule}" if line else rule)

    def where(self, source: str) -> str:
        """``<source>, line N: <rule>``, the one line the user sees."""
        return f"{source}, line {self.line}: {self.rule}" if self.line else f"{source}: {self.rule}"


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the bounds of the module doc."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise YamlInputError(f"nested more than {MAX_DEPTH} levels deep", mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _check_expanded_size(node)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise YamlInputError(f"duplicate key {key!r} (first given on line {seen[key]})", line)
                    seen[key] = line
                except TypeError:  # an unhashable key: PyYAML's own error says so below
                    continue
        return super().construct_mapping(node, deep=deep)


def _check_expanded_size(root: yaml.Node) -> None:
    """Refuse a node graph whose alias-expanded size passes ``MAX_NODES``."""
    sizes: dict[int, int] = {}
    # Iterative post-order walk: the graph is at most MAX_DEPTH deep, but shared nodes
    # (aliases) are visited once and their size reused.
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if not children_done and children:
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        size = 1 + sum(sizes[id(child)] for child in children)
        if size > MAX_NODES:
            raise YamlInputError(
                f"expands to more than {MAX_NODES:,} values (through aliases: *name repeats &name's value)",
                node.start_mark.line + 1)
        sizes[id(node)] = size


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


# Numbers as Python spells them (see the module doc): a copy of the safe loader's resolvers
# with the float and int patterns replaced in place (the float resolver is tried first).
_FLOAT = "tag:yaml.org,2002:float"
_FLOAT_PATTERN = re.compile(
    r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_INT = "tag:yaml.org,2002:int"
_INT_PATTERN = re.compile(r"^[-+]?[0-9][0-9_]*$")
_PATTERNS = {_FLOAT: _FLOAT_PATTERN, _INT: _INT_PATTERN}
_BoundedLoader.yaml_implicit_resolvers = {
    first: [(tag, _PATTERNS.get(tag, regexp)) for tag, regexp in resolvers]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _decimal_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node).replace("_", "")
    # Plain integers are decimal; an explicit ``!!int 0x10`` keeps YAML 1.1's reading.
    return int(text) if _INT_PATTERN.match(text) else yaml.SafeLoader.construct_yaml_int(loader, node)


_BoundedLoader.add_constructor(_INT, _decimal_int)


def load_yaml(text: str) -> Any:
    """``text`` parsed as bounded YAML (see the module doc).

    Raises:
        YamlInputError: a bound or rule was broken (with the line).
        yaml.YAMLError: the text is not YAML.
    """
    if len(text) > MAX_BYTES:
        raise YamlInputError(f"larger than {MAX_BYTES:,} characters")
    return yaml.load(text, Loader=_BoundedLoader)


def read_yaml_text(data: bytes) -> str:
    """The text of a YAML file's bytes: UTF-8 without a byte-order mark, at most ``MAX_BYTES``.

    Raises:
        YamlInputError: too large, a BOM, or a byte that is not UTF-8 (with its line).
    """
    if len(data) > MAX_BYTES:
        raise YamlInputError(f"the file has {len(data):,} bytes; a config may have at most {MAX_BYTES:,}")
    if data.startswith(b"\xef\xbb\xbf"):
        raise YamlInputError("starts with a UTF-8 byte-order mark (BOM); save the file as UTF-8 without BOM", 1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise YamlInputError(f"byte 0x{data[err.start]:02x} is not UTF-8; configs are UTF-8 text", line) from None


def read_yaml_file(path) -> Any:
    """The bounded YAML in the file ``path``.

    Raises:
        ConfigInputError: the file breaks a bound or is not YAML; the message is one line
            naming the file, the line and the rule.
        OSError: the file cannot be read.
    """
    with open(path, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    try:
        text = read_yaml_text(data)
        return load_yaml(text)
    except YamlInputError as err:
        raise ConfigInputError(err.where(str(path))) from None
    except yaml.YAMLError as err:
        raise ConfigInputError(yaml_error_line(err, str(path), text)) from None


class ConfigInputError(ValueError):
    """A config file the bounded reader refuses, in one line naming the file, the line and the rule."""


def yaml_error_line(err: yaml.YAMLError, source: str, text: str | None = None) -> str:
    """PyYAML's multi-line error as one line: ``<source>, line N: <problem>`` (``text``, the
    parsed text, gives the line of a reader error, which PyYAML reports by position)."""
    if isinstance(err, yaml.reader.ReaderError):
        line = None if text is None else text[: err.position].count("\n") + 1
        where = f", line {line}" if line else ""
        return f"{source}{where}: not valid YAML (character {err.character!r} is not allowed in YAML)"
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = " ".join(str(p) for p in (getattr(err, "context", None), getattr(err, "problem", None)) if p) or str(err)
    where = f", line {mark.line + 1}" if mark is not None else ""
    return f"{source}{where}: not valid YAML ({' '.join(problem.split())})"
