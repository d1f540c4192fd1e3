"""The next state of the policy authority, and the check every stored bundle passes.

Pure rules shared by the authority (which enforces them), the store (which
refuses a statement for any other epoch) and the `govmesh policy` command
(which signs the statement the authority will accept), so that they are
written once:

- An activation names exactly the epoch after the current one.
- A bundle that becomes active stops being the shadow; the shadow is kept
  otherwise.
- A stored bundle is served or evaluated only if its content hashes to its
  version and a trusted policy admin signed exactly that version.
"""

from __future__ import annotations

from govmesh.artifacts.signing import Activation, AdminKeys, verify_bundle_signature
from govmesh.policy.bundle import BundleRejected, BundleSource, parse_bundle_content
from govmesh.runtime.errors import PreconditionFailed


class NothingActive(PreconditionFailed):
    """A shadow bundle needs an active one beside it, and none is active."""

    def __init__(self) -> None:
        super().__init__("nothing is active yet")


class NoShadow(PreconditionFailed):
    """There is no shadow bundle to clear."""

    def __init__(self) -> None:
        super().__init__("there is no shadow bundle")


class AlreadyInRole(PreconditionFailed):
    """The bundle already holds the role asked for: the activation would change nothing."""

    def __init__(self, version: str, role: str) -> None:
        super().__init__(f"{version} is already the {role} bundle")
        self.version = version
        self.role = role


class NotItsVersion(BundleRejected):
    """A stored bundle whose content does not hash to the version it is stored under."""

    def __init__(self, version: str, actual: str) -> None:
        super().__init__(f"stored bundle {version} does not hash to its version")
        self.version = version
        self.actual = actual


def next_epoch(current: Activation | None) -> int:
    """The epoch the next activation must name: the one after `current` (1 before any)."""
    return (current.epoch if current is not None else 0) + 1


def activate(current: Activation | None, version: str) -> Activation:
    """The activation that makes `version` active; a shadow that becomes active stops being one."""
    if current is not None and current.active == version:
        raise AlreadyInRole(version, "active")
    shadow = current.shadow if current is not None else None
    return Activation(next_epoch(current), version, None if shadow == version else shadow)


def observe(current: Activation | None, version: str) -> Activation:
    """The activation that makes `version` the shadow beside the active bundle."""
    if current is None or not current.active:
        raise NothingActive()
    for role, holder in (("active", current.active), ("shadow", current.shadow)):
        if version == holder:
            raise AlreadyInRole(version, role)
    return Activation(next_epoch(current), current.active, version)


def clear_shadow(current: Activation | None) -> Activation:
    """The activation that stops observing the shadow bundle."""
    if current is None or not current.shadow:
        raise NoShadow()
    return Activation(next_epoch(current), current.active, None)


def verify_stored_bundle(
    content: bytes, signature: str, version: str, keys: AdminKeys
) -> BundleSource:
    """The bundle stored as `version`, verified as a replica verifies it before compiling it.

    1. The content is a canonical bundle document that hashes to `version`.
    2. A policy admin that `keys` trusts signed exactly that version.

    Raises BundleRejected (NotItsVersion for a hash that differs) or SignatureRejected.
    """
    # 1. Content.
    source = parse_bundle_content(content)
    if source.version != version:
        raise NotItsVersion(version, source.version)
    # 2. Signature.
    verify_bundle_signature(signature, version, keys)
    return source
