"""Griffe extension for the API reference: read the package's Sphinx-flavoured docstrings as written.

The docstrings are written for readers of the source, in a Sphinx style that mkdocstrings
(Markdown) does not understand. Without this extension ``:class:`FrozenMap``` would render as
":class:" followed by code, and the ``#:`` comments that document attributes would be dropped.
It changes nothing in the package; on the loaded tree it:

- turns ``:class:`X```, ``:func:`X```, ``:mod:`.x``` (any role, ``~`` prefix allowed) into a
  link to ``X`` when ``X`` names an object of the package, and into plain code otherwise;
- links single-backtick names (```NatsPublisher```, ```PublisherConfig.from_env()```) that
  name an object of the package in the docstring's scope; any other code span is left as is;
- reads ``text::`` before a literal block as ``text:`` (and drops a lone ``::``), as Sphinx does,
  and escapes a ``<`` in prose (``HPUB <subject>``) so Markdown does not take it for HTML;
- gives an attribute without a docstring the ``#:`` comment lines right above it, and shows an
  attrs field's value as its default (``max_queue: int = 10000``, not ``= attrs.field(...)``);
- hides ``__repr__``, ``__str__``, ``__slots__`` and ``__attrs_post_init__`` when undocumented
  (the ``public`` filter keeps every special member; ``__enter__``, ``__len__``... stay).

Links are "optional" autorefs: an object that is not rendered (a private module's) stays plain
code instead of failing ``mkdocs build --strict``. Code blocks are left untouched.
"""

from __future__ import annotations

import html
import re
from typing import Any

from griffe import (
    Attribute,
    Docstring,
    ExprCall,
    ExprKeyword,
    Extension,
    GriffeLoader,
    Module,
    NameResolutionError,
    Object,
)

PACKAGE = "edupulse_events"
_ROLE = re.compile(r":(?:py:)?[a-z]+:`~?(?P<target>[^`]+)`")
_NAME = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_SPAN = re.compile(rf"(?<![`\w])`(?P<target>{_NAME})(?P<call>\(\))?`(?![`\w])")
_CODE = re.compile(r"(`+)(?:.+?)\1")
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")
# special members that say nothing to a reader unless they have a docstring of their own
_UNDOCUMENTED_NOISE = {"__repr__", "__str__", "__slots__", "__attrs_post_init__", "__hash__", "__eq__"}
_ATTRS_FIELD = {"attrs.field", "attr.ib", "attr.attrib", "attrs.attrib", "field"}


def _exists(obj: Object, path: str) -> bool:
    try:
        obj.modules_collection[path]
    except (KeyError, ValueError):
        return False
    return True


def _resolve(obj: Object, target: str) -> str | None:
    """The full path `target` names as seen from `obj`'s docstring, or None outside the package."""
    if target.startswith("."):
        package = obj.module if obj.module.is_package else obj.module.parent
        stripped = target.lstrip(".")
        for _ in range(len(target) - len(stripped) - 1):
            package = package.parent if package is not None else None
        if package is None:
            return None
        path = f"{package.path}.{stripped}" if stripped else package.path
    elif target == PACKAGE or target.startswith(PACKAGE + "."):
        path = target
    else:
        head, _, rest = target.partition(".")
        try:
            path = obj.resolve(head)
        except NameResolutionError:
            return None
        path = f"{path}.{rest}" if rest else path
    if not (path == PACKAGE or path.startswith(PACKAGE + ".")) or not _exists(obj, path):
        return None
    return path


def _link(path: str, text: str) -> str:
    return f'<autoref identifier="{html.escape(path)}" optional><code>{html.escape(text)}</code></autoref>'


def _rewrite_line(obj: Object, line: str) -> str:
    def role(match: re.Match[str]) -> str:
        target = match["target"]
        shown = target.lstrip(".").rsplit(".", 1)[-1] if match[0].count("~") else target
        path = _resolve(obj, target)
        return _link(path, shown) if path else f"`{shown}`"

    def span(match: re.Match[str]) -> str:
        path = _resolve(obj, match["target"])
        return _link(path, match["target"] + (match["call"] or "")) if path else match[0]

    # escape "<" outside code spans, then turn roles and names into links
    escaped: list[str] = []
    index = 0
    for match in _CODE.finditer(line):
        escaped += [_TAG_START.sub("&lt;", line[index : match.start()]), match[0]]
        index = match.end()
    escaped.append(_TAG_START.sub("&lt;", line[index:]))
    line = "".join(escaped)
    if line.strip() == "::":
        line = ""
    elif line.endswith("::"):
        line = line[:-3] + ":" if line.endswith(" ::") else line[:-1]
    return _SPAN.sub(span, _ROLE.sub(role, line))


def _rewrite(obj: Object, text: str) -> str:
    """Rewrite the references in `text`, leaving fenced and indented code blocks alone."""
    out: list[str] = []
    fenced = indented = False
    previous_blank = True
    for line in text.split("\n"):
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced:
            if stripped and line.startswith("    "):
                indented = indented or previous_blank
            elif stripped:
                indented = False
        out.append(line if fenced or indented or stripped.startswith("```") else _rewrite_line(obj, line))
        previous_blank = not stripped
    return "\n".join(out)


def _comment_docstring(obj: Object) -> str | None:
    """The ``#:`` comment lines right above an attribute's assignment, joined, or None."""
    if obj.lineno is None:
        return None
    try:
        lines = obj.module.lines
    except (OSError, ValueError):
        return None
    found: list[str] = []
    index = obj.lineno - 2
    while index >= 0 and lines[index].strip().startswith("#:"):
        found.insert(0, lines[index].strip()[2:].strip())
        index -= 1
    return "\n".join(found) or None


def _attrs_default(attr: Attribute) -> None:
    """Show ``x: int = attrs.field(default=1, ...)`` as ``x: int = 1`` (no default: no value)."""
    value = attr.value
    if not isinstance(value, ExprCall) or str(value.function) not in _ATTRS_FIELD:
        return
    keywords = {arg.name: arg.value for arg in value.arguments if isinstance(arg, ExprKeyword)}
    if "default" in keywords:
        attr.value = keywords["default"]
    elif "factory" in keywords:
        factory = keywords["factory"]
        attr.value = f"{factory}()" if isinstance(factory, str) else ExprCall(factory, [])
    else:
        attr.value = None


class SphinxRefs(Extension):
    """Rewrite the package's docstrings for Markdown once the package is loaded."""

    def on_package(self, *, pkg: Module, loader: GriffeLoader, **kwargs: Any) -> None:
        if pkg.path == PACKAGE:
            self._visit(pkg)

    def _visit(self, obj: Object) -> None:
        if isinstance(obj, Attribute):
            _attrs_default(obj)
            if obj.docstring is None and (comment := _comment_docstring(obj)):
                obj.docstring = Docstring(comment, parent=obj)
        if obj.docstring is not None:
            obj.docstring.value = _rewrite(obj, obj.docstring.value)
        for member in obj.members.values():
            if not member.is_alias and isinstance(member, Object):
                if member.name in _UNDOCUMENTED_NOISE and member.docstring is None:
                    member.public = False
                self._visit(member)
