"""Checking a user's settings file (a tuner recipe, autopilot rules): every problem at once,
each with its line, instead of the first one alone."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from .errors import HotcbError

__all__ = ["CheckError", "Checker", "as_text_hint", "collect_lines", "parse_document"]


class CheckError(HotcbError, ValueError):
    """A document with problems; ``problems`` lists every one."""

    def __init__(self, where: str, problems: list[str]) -> None:
        self.problems = problems
        listed = "\n  ".join(problems)
        super().__init__(f"{where} has {len(problems)} problem(s):\n  {listed}")


_Number = (int, float)


def as_text_hint(value: Any) -> str:
    """`` (YAML reads 1e-3 as text: write 1.0e-3)`` for a string that is a number: PyYAML
    takes an exponent without a dot, or without its sign (``1.0e9``), for a string, and "got
    '1e-3'" did not say why. The fix given is the value itself, written as YAML reads it."""
    if not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    mantissa, e, exponent = value.strip().replace("E", "e").partition("e")
    if not e:
        return ""
    mantissa = mantissa if "." in mantissa else mantissa + ".0"
    exponent = exponent if exponent[:1] in ("+", "-") else "+" + exponent
    return f" (YAML reads {value} as text: write {mantissa}e{exponent})"


class Checker:
    """Collects problems, each with the line it was found on (when the source has lines)."""

    def __init__(self, lines: Mapping[str, int] | None = None) -> None:
        self.problems: list[str] = []
        self.lines = lines or {}

    def add(self, where: str, message: str) -> None:
        line, at = self.lines.get(where), where
        while line is None and at:  # a missing key: the line of what should hold it
            at = at[: max(at.rfind("."), at.rfind("["), 0)]
            line = self.lines.get(at)
        prefix = f"line {line}: " if line is not None else ""
        self.problems.append(f"{prefix}{where}: {message}")

    def choice(self, doc: Mapping[str, Any], key: str, where: str, options: tuple[str, ...]) -> Any:
        value = doc.get(key)
        if value is not None and value not in options:
            self.add(where, f"{value!r} is not one of {', '.join(options)}")
            return None
        return value

    def number(
        self, doc: Mapping[str, Any], key: str, where: str, *, integer: bool = False,
        minimum: float | None = None, maximum: float | None = None,
    ) -> Any:  # fmt: skip
        value = doc.get(key)
        if value is None:
            return None
        kinds = (int,) if integer else _Number
        if isinstance(value, bool) or not isinstance(value, kinds):
            self.add(where, f"expected {'an integer' if integer else 'a number'}, got {value!r}"
                     + as_text_hint(value))  # fmt: skip
            return None
        if not math.isfinite(value):
            self.add(where, f"expected a finite number, got {value!r}")
            return None
        if minimum is not None and value < minimum:
            self.add(where, f"must be >= {minimum:g}, got {value!r}")
            return None
        if maximum is not None and value > maximum:
            self.add(where, f"must be <= {maximum:g}, got {value!r}")
            return None
        return value

    def string(self, doc: Mapping[str, Any], key: str, where: str) -> Any:
        value = doc.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            self.add(where, f"expected a non-empty string, got {value!r}")
            return None
        return value


def parse_document(
    text: str, path: str, error: type[CheckError] = CheckError
) -> tuple[Any, dict[str, int]]:
    """The document in ``text`` (JSON for a ``.json`` path, else YAML) and the line of every
    key and item (``{"space[0].mode": 7}``); ``error`` lists what does not parse, with its line."""
    if path.endswith(".json"):
        import json

        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise error(path, [f"not valid JSON: {exc}"]) from None
        return doc, _json_lines(text, path, error)
    try:
        import yaml
    except ImportError:  # the core install has no YAML reader
        raise error(path, ['reading YAML needs PyYAML: pip install "hotcb[yaml]"']) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise error(path, [f"{where}not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    lines: dict[str, int] = {}
    twice: list[str] = []
    if node is not None:
        collect_lines(node, "", lines, twice)
    if twice:  # YAML keeps the last silently: the first one's problems would go unseen
        raise error(path, twice)
    return doc, lines


def _json_lines(text: str, path: str, error: type[CheckError]) -> dict[str, int]:
    """The line of every key and item of a JSON document, read by the YAML composer (JSON is
    YAML's flow style): JSON files had problems without their lines. A key given twice is an
    error as in YAML (``json`` keeps the last silently). ``{}`` when YAML reads it otherwise."""
    try:
        import yaml

        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except Exception:  # no pyyaml, a tab YAML refuses: the problems go without lines
        return {}
    lines: dict[str, int] = {}
    twice: list[str] = []
    if node is not None:
        collect_lines(node, "", lines, twice)
    if twice:
        raise error(path, twice)
    return lines


def collect_lines(
    node: Any, where: str, lines: dict[str, int], twice: list[str] | None = None
) -> None:
    """``{"space[0].mode": 7, …}``: the line of every key and item (1-based); a key given
    twice in one mapping goes to ``twice`` (``line 9: 'space' is given twice …``)."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            at = f"{where}.{key_node.value}" if where else str(key_node.value)
            line = key_node.start_mark.line + 1
            first = seen.setdefault(str(key_node.value), line)
            if first != line and twice is not None:
                twice.append(f"line {line}: {key_node.value!r} is given twice (first at line "
                             f"{first}); a YAML file keeps only the last")  # fmt: skip
            lines[at] = line
            collect_lines(value_node, at, lines, twice)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            at = f"{where}[{i}]"
            lines[at] = item.start_mark.line + 1
            collect_lines(item, at, lines, twice)


def number_arg(
    convert: Callable[[str], Any], ok: Callable[[Any], bool], expected: str, must: str
) -> Callable[[str], Any]:
    """An argparse ``type``: ``convert(text)`` when ``ok`` says it fits, else the argparse
    error ``expected {expected}, got 'x'`` or ``{must}, got x`` (one line, exit 2)."""
    import argparse

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{must}, got {text}")
        return value

    return parse
