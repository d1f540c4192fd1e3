"""One spelling per name: every other spelling of a forbidden name is refused.

A policy forbids `account:acme/frozen`; an executor that decodes, normalises,
globs or folds case would read each spelling generated here as that resource
(or as a wider set holding it). The engine must refuse every one of them as
MALFORMED_REQUEST before anyone is asked, never pass it on to a policy that
only knows the exact name.
"""

from __future__ import annotations

import posixpath
import unicodedata
from urllib.parse import unquote, unquote_plus

import pytest
from hypothesis import assume, example, given, note, settings
from hypothesis import strategies as st

from govmesh.artifacts.names import (
    MAX_RESOURCE_CHARS,
    InvalidName,
    check_action,
    check_resource,
    is_action,
    is_resource,
)
from govmesh.engine.requests import MalformedRequest, validate
from tests.unit.engine_fakes import authorize_request

# -- names in the grammar -----------------------------------------------------------------------

WORD = st.from_regex(r"[a-z0-9_-]{1,8}", fullmatch=True)
SEGMENT = st.from_regex(r"\.{0,2}[a-z0-9_-]([a-z0-9_.-]{0,6}[a-z0-9_-])?", fullmatch=True)
TYPE = st.from_regex(r"[a-z][a-z0-9_-]{0,6}", fullmatch=True)

actions = st.lists(WORD, min_size=1, max_size=4).map(".".join)
resources = st.builds(
    lambda kind, path: f"{kind}:{'/'.join(path)}", TYPE, st.lists(SEGMENT, min_size=1, max_size=4)
)


@given(action=actions, resource=resources)
def test_names_built_from_the_grammar_are_accepted(action: str, resource: str) -> None:
    check_action(action)
    check_resource(resource)
    validate(authorize_request(action=action, resource=resource))


def _normalised(name: str) -> str:
    """What a lenient executor makes of a name: every common normalisation at once."""
    for _ in range(3):
        name = unquote_plus(unquote(name))
    name = unicodedata.normalize("NFKC", name).casefold().strip()
    name = name.replace("\\", "/").split("?")[0].split("#")[0].split(";")[0]
    kind, _, path = name.partition(":")
    path = posixpath.normpath("/" + path).lstrip("/")
    return f"{kind}:" + "/".join(s.rstrip(". ") for s in path.split("/"))


@given(resource=resources)
def test_every_name_in_the_grammar_is_already_in_normal_form(resource: str) -> None:
    # So two different names can never be read as the same by such an executor.
    assert _normalised(resource) == resource


# -- other spellings of a forbidden name --------------------------------------------------------

FORBIDDEN = "account:acme/frozen"
#: Cyrillic and other letters that look like (or fold to) ASCII ones.
_LOOK_ALIKES = {
    "a": "\u0430",
    "c": "\u0441",
    "e": "\u0435",
    "o": "\u043e",
    "s": "\u017f",
    "k": "\u212a",
}


def _percent(name: str, index: int, upper: bool) -> str:
    code = f"%{ord(name[index]):02X}" if upper else f"%{ord(name[index]):02x}"
    return name[:index] + code + name[index + 1 :]


def _separators(name: str) -> list[int]:
    return [i for i, c in enumerate(name) if c in ":/"]


@st.composite
def aliases(draw: st.DrawFn, name: str) -> str:
    """A spelling some executor reads as `name` (or as a set of names that holds it)."""
    kind, _, path = name.partition(":")
    index = draw(st.integers(0, len(name) - 1))
    char = name[index]
    slash = draw(st.sampled_from([i for i, c in enumerate(name) if c == "/"] or [len(name)]))
    tail = draw(st.text(alphabet="ab%.0", max_size=3))
    letter = draw(st.sampled_from([i for i, c in enumerate(name) if c.isalpha()]))
    at = draw(st.sampled_from([0, index, len(name)]))
    before, after = name[:letter], name[letter + 1 :]
    transforms = {
        "trailing slash": name + "/" * draw(st.integers(1, 3)),
        "leading slash": f"{kind}:/{path}",
        "double slash": name[:slash] + "//" + name[slash + 1 :],
        "dot segment": name[:slash] + "/./" + name[slash + 1 :],
        "dot-dot segment": name[:slash] + f"/{draw(WORD)}/../" + name[slash + 1 :],
        "dot-dot at the end": name + f"/{draw(WORD)}/..",
        "dot at the end": name + "/.",
        "trailing dot": name + "." * draw(st.integers(1, 3)),
        "percent-encoded character": _percent(name, index, draw(st.booleans())),
        "double percent-encoding": name[:index] + "%25" + _percent(name, index, True)[index + 1 :],
        "encoded NUL": name + "%00" + tail,
        "encoded dots": name + draw(st.sampled_from(["/%2e", "/%2e%2e", "%2e", "/%2E%2E/x"])),
        "encoded slash": name[:slash]
        + draw(st.sampled_from(["%2f", "%2F", "%252f"]))
        + name[slash + 1 :],
        "query": name + "?" + tail,
        "fragment": name + "#" + tail,
        "glob star": name[:index] + draw(st.sampled_from(["*", "**"])) + name[index:],
        "glob any": name[:index] + "?" + name[index + 1 :],
        "glob class": name[:index] + f"[{char}]" + name[index + 1 :],
        "path parameter": name + ";" + tail,
        "plus": name + "+",
        "tilde": name[:-1] + "~1",
        "backslash": name[:slash] + "\\" + name[slash + 1 :],
        "upper case": before + name[letter].upper() + after,
        "all upper case": name.upper(),
        "fullwidth letter": before + chr(ord(name[letter]) + 0xFEE0) + after,
        "combining mark": before + name[letter] + "\u0301" + after,
        "look-alike letter": before + _LOOK_ALIKES.get(name[letter], "\u0131") + after,
        "whitespace": name[:at]
        + draw(st.sampled_from([" ", "\t", "\n", "\r", "\u00a0", "\u2028", "\u3000"]))
        + name[at:],
        "control character": name[:at]
        + draw(st.sampled_from(["\x00", "\x1b", "\x7f"]))
        + name[at:],
        "userinfo": name.replace(":", ":x@", 1),
        "scheme in path": f"{kind}:https://{path}",
    }
    how = draw(st.sampled_from(sorted(transforms)))
    note(f"{how}: {transforms[how]!r}")
    return transforms[how]


@settings(max_examples=1000)
@given(spelling=aliases(FORBIDDEN))
@example(spelling="account:acme/frozen/")
@example(spelling="account:acme/frozen%00")
@example(spelling="account:acme/%2566rozen")
def test_no_other_spelling_of_a_forbidden_resource_passes_validation(spelling: str) -> None:
    assume(spelling != FORBIDDEN)
    with pytest.raises(MalformedRequest):
        validate(authorize_request(resource=spelling))


@settings(max_examples=300)
@given(data=st.data(), resource=resources)
def test_no_other_spelling_of_any_name_passes_validation(
    data: st.DataObject, resource: str
) -> None:
    spelling = data.draw(aliases(resource))
    assume(spelling != resource)
    with pytest.raises(MalformedRequest):
        validate(authorize_request(resource=spelling))


@settings(max_examples=300)
@given(data=st.data(), action=actions)
def test_no_other_spelling_of_an_action_passes_validation(data: st.DataObject, action: str) -> None:
    assume(any(c.isalpha() for c in action))
    index = data.draw(st.integers(0, len(action) - 1))
    spelling = data.draw(
        st.sampled_from(
            [
                action + ".",
                "." + action,
                action.replace(".", "..") if "." in action else action + "..",
                _percent(action, index, data.draw(st.booleans())),
                action.upper(),
                action + data.draw(st.sampled_from(["*", "?", "#", "/", " ", "\x00", "\u00a0"])),
                action[:index] + "*" + action[index:],
                unicodedata.normalize("NFD", action.replace("e", "\u00e9")) + "\u017f",
                action + "/" + data.draw(WORD),
            ]
        )
    )
    with pytest.raises(MalformedRequest):
        validate(authorize_request(action=spelling))


@given(text=st.text(max_size=40))
def test_arbitrary_text_is_accepted_only_inside_the_grammar(text: str) -> None:
    if is_resource(text):
        check_resource(text)
        assert text.isascii() and text == text.strip() and "%" not in text
        assert _normalised(text) == text
    else:
        with pytest.raises(InvalidName, match=r"^resource "):
            check_resource(text)


def test_the_limits_are_part_of_the_grammar() -> None:
    longest = "r:" + "a" * (MAX_RESOURCE_CHARS - 2)
    assert is_resource(longest)
    assert not is_resource(longest + "a")
    assert not is_action("a" * 257)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("account:acme/frozen/", "empty path segment"),
        ("account:acme/%2e%2e/frozen", "percent-encoding"),
        ("account:acme/frozen?", "query"),
        ("account:acme/Frozen", "upper-case"),
        ("account:acme/frozen.", "trailing dots"),
        ("account:acme/..", "dot segment"),
        ("account:acme/caf\u00e9", "not ASCII"),
        ("acme/frozen", "TYPE:PATH"),
    ],
)
def test_the_refusal_says_why(name: str, why: str) -> None:
    with pytest.raises(InvalidName, match=why):
        check_resource(name)
