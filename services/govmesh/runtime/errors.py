"""The one root of govmesh's errors, and the kinds a gRPC edge can report.

Every exception govmesh raises on purpose derives from `GovmeshError`, so a
caller can tell govmesh's own refusals from a bug with one `except`. Each one
also derives from exactly one kind below; the kind decides the gRPC status an
edge sends (`govmesh.runtime.status` holds that one table). A class may keep a
standard base (ValueError, say) beside its kind, for code that catches it so.

`reason` is the stable, machine-readable name a caller reads from the
google.rpc.ErrorInfo detail; by default the class name in UPPER_SNAKE_CASE.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"(?<!^)(?=[A-Z][a-z])|(?<=[a-z0-9])(?=[A-Z])")


class GovmeshError(Exception):
    """Anything govmesh raises on purpose; the root of every kind below."""

    #: The ErrorInfo reason a gRPC edge sends; None means the class name.
    reason: str | None = None

    @classmethod
    def reason_code(cls) -> str:
        """The stable reason for this class: `reason`, or UPPER_SNAKE of its name."""
        if cls.reason is not None:
            return cls.reason
        return _WORD.sub("_", cls.__name__.lstrip("_")).upper()


class ConfigurationError(GovmeshError):
    """Settings, files or peers that a service cannot start with.

    The message is shown to the operator as is: it names what is wrong and,
    where it can, how to fix it.
    """


class InvalidInput(GovmeshError):
    """What the caller sent is not acceptable as it is (INVALID_ARGUMENT)."""


class OutOfRange(GovmeshError):
    """A well-formed request names a position past what exists (OUT_OF_RANGE)."""


class NotFound(GovmeshError):
    """The named thing does not exist (NOT_FOUND)."""


class PermissionRefused(GovmeshError):
    """A signature or key the request relies on is not trusted (PERMISSION_DENIED)."""


class Conflict(GovmeshError):
    """Someone else changed the state first; read it again and retry (ABORTED)."""


class PreconditionFailed(GovmeshError):
    """The system is not in a state that allows this request (FAILED_PRECONDITION)."""


class Unavailable(GovmeshError):
    """A dependency cannot answer now; the same request may succeed later (UNAVAILABLE)."""


class Exhausted(GovmeshError):
    """This process is at capacity; retry after the hinted delay (RESOURCE_EXHAUSTED)."""


class IntegrityError(GovmeshError):
    """Stored or received data fails its own integrity check (DATA_LOSS)."""
