"""The one grammar of the names govmesh decides on: actions and resources.

A name has exactly one spelling. The executor acts on the string in the grant,
and many executors decode, normalise, glob or fold case before they look a name
up; a policy that forbids `account:acme/frozen` must not be passed by a spelling
one of them reads as that resource (`account:acme/frozen/`,
`account:acme//frozen`, `account:acme/x/../frozen`, `account:acme/%66rozen`,
`account:acme/FROZEN`, `account:acme/frozen?x`). So the grammar is an allow-list
in which no two strings name the same thing to a common executor; nothing is
decoded or normalised, a name outside it is refused. The engine's validation,
verification's scope match and the SDK's verify_grant all ask this module, so
they cannot disagree on what a name is. The README states the same grammar::

    action    = word *( "." word )
    word      = 1*( a-z / 0-9 / "_" / "-" )
    resource  = type ":" path
    type      = a-z *( a-z / 0-9 / "_" / "-" )
    path      = segment *( "/" segment )
    segment   = 1*( a-z / 0-9 / "_" / "-" / "." ), not only dots, not ending in "."

What is left out, and why:

- upper case: case-insensitive file systems, SQL collations, DNS and key stores
  read `FROZEN` as `frozen`;
- anything outside ASCII: Unicode has several normal forms, compatibility and
  case foldings (the long s folds to `s`, the Kelvin sign to `k`) and look-alike letters;
- `%`: percent-decoding makes `%66` an `f`, `%2f` a `/`, `%2e%2e` a dot
  segment, `%00` the end of a C string; with no encoding at all each name has
  one spelling;
- `?`, `#`: a URL reads the rest as query or fragment; `*`, `[`, `]`: globs;
  `\\`: a path separator on Windows; `;`: path parameters (`frozen;x` is
  `frozen` to some servers); `+`: a space in form encoding; `~`: home
  directories and Windows short names (`FROZE~1`); `@`, `:` in the path:
  URL userinfo and schemes; whitespace and control characters: trimmed, or the
  end of the string;
- empty segments (a leading, trailing or doubled `/`), `.` and `..` (and any
  all-dot segment), a segment ending in `.`: path normalisation collapses the
  first, resolves the second, and Windows drops trailing dots.

Scope patterns in mandates are matched only against names in this grammar, so a
`*` can never reach a refused spelling.
"""

from __future__ import annotations

import re

from govmesh.runtime.errors import InvalidInput

MAX_ACTION_CHARS = 256
MAX_RESOURCE_CHARS = 1024

_WORD = r"[a-z0-9_-]+"
_SEGMENT = r"\.*[a-z0-9_-](?:[a-z0-9_.-]*[a-z0-9_-])?"
_ACTION = re.compile(rf"{_WORD}(?:\.{_WORD})*")
_RESOURCE = re.compile(rf"[a-z][a-z0-9_-]*:{_SEGMENT}(?:/{_SEGMENT})*")

#: Characters some executor reads as something else, with the reason given back.
_MEANINGFUL = {
    "%": "percent-encoding is refused: a name has one spelling",
    "?": "a URL reads what follows as a query",
    "#": "a URL reads what follows as a fragment",
    "*": "globs expand it",
    "[": "globs expand it",
    "]": "globs expand it",
    "\\": "Windows reads it as a path separator",
    ";": "servers read what follows as path parameters",
    "+": "form decoding reads it as a space",
    "~": "it names home directories and Windows short names",
    "@": "a URL reads what precedes as user information",
}


class InvalidName(InvalidInput, ValueError):
    """An action or resource outside govmesh's name grammar; the message says why."""


def is_action(text: str) -> bool:
    """Whether `text` is an action in the grammar."""
    return len(text) <= MAX_ACTION_CHARS and _ACTION.fullmatch(text) is not None


def is_resource(text: str) -> bool:
    """Whether `text` is a resource in the grammar."""
    return len(text) <= MAX_RESOURCE_CHARS and _RESOURCE.fullmatch(text) is not None


def check_action(text: str) -> None:
    """Raise InvalidName unless `text` is an action in the grammar."""
    if not is_action(text):
        raise InvalidName(f"action {_why_not(text, 'action', MAX_ACTION_CHARS)}")


def check_resource(text: str) -> None:
    """Raise InvalidName unless `text` is a resource in the grammar."""
    if not is_resource(text):
        raise InvalidName(f"resource {_why_not(text, 'resource', MAX_RESOURCE_CHARS)}")


def _why_not(text: str, kind: str, limit: int) -> str:
    """Why `text` is refused, for the message only: the regular expressions decide."""
    if not text or len(text) > limit:
        return f"must be 1..{limit} characters"
    if not text.isascii():
        return "is not ASCII: other letters have look-alikes and several normal forms"
    if any(not c.isprintable() for c in text):
        return "contains control characters"
    if any(c.isspace() for c in text):
        return "contains whitespace"
    if any(c.isupper() for c in text):
        return "has upper-case letters: case-insensitive executors fold them"
    for char, reason in _MEANINGFUL.items():
        if char in text:
            return f"contains {char!r}: {reason}"
    separators = "." if kind == "action" else ":/."
    for char in text:
        if not (char.islower() or char.isdigit() or char in "_-" or char in separators):
            return f"contains {char!r}, which is not in [a-z0-9_-] or a separator"
    if kind == "action":
        return "has an empty word: a leading, trailing or doubled '.'"
    kind_name, colon, path = text.partition(":")
    if not colon:
        return "must be TYPE:PATH"
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", kind_name):
        return "type must be a lower-case letter then [a-z0-9_-]"
    if ":" in path:
        return "has ':' in its path: URL schemes alias other names"
    for segment in path.split("/"):
        if not segment:
            return "has an empty path segment: a leading, trailing or doubled '/'"
        if segment.strip(".") == "":
            return "has a dot segment: path normalisation resolves it to another name"
        if segment.endswith("."):
            return "has a segment ending in '.': Windows drops trailing dots"
    return "is not in govmesh's name grammar"
