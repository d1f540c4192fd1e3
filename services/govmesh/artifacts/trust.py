"""The trust configuration (DESIGN.md section 4): one TOML file, paths relative to it."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from govmesh.runtime.errors import ConfigurationError


class TrustFileError(ConfigurationError):
    """A trust file, or a JWKS file it names, that cannot be used."""


@dataclass(frozen=True)
class TrustedParty:
    """An issuer or attestor and its public keys."""

    iss: str
    jwks_path: Path
    keys: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Trust:
    """Everything the trust file says, with the JWKS files read."""

    path: Path
    issuers: dict[str, TrustedParty]
    attestors: dict[str, TrustedParty]
    allowed_measurements: frozenset[str] = field(default_factory=frozenset)


def _read_jwks(path: Path) -> tuple[dict[str, Any], ...]:
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise TrustFileError(f"cannot read JWKS {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise TrustFileError(f"JWKS {path} is not JSON") from exc
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not keys or not all(isinstance(k, dict) for k in keys):
        raise TrustFileError(f"JWKS {path} has no keys")
    for key in keys:
        if "d" in key or "k" in key:
            raise TrustFileError(f"JWKS {path} contains private or symmetric key material")
    return tuple(keys)


def _parties(doc: dict[str, Any], section: str, base: Path) -> dict[str, TrustedParty]:
    entries = doc.get(section, [])
    if not isinstance(entries, list):
        raise TrustFileError(f"[[{section}]] must be an array of tables")
    parties: dict[str, TrustedParty] = {}
    for entry in entries:
        iss, jwks = entry.get("iss"), entry.get("jwks")
        if not isinstance(iss, str) or not iss or not isinstance(jwks, str) or not jwks:
            raise TrustFileError(f"every [[{section}]] needs iss and jwks")
        if iss in parties:
            raise TrustFileError(f"[[{section}]] lists {iss!r} twice")
        path = (base / jwks).resolve()
        parties[iss] = TrustedParty(iss=iss, jwks_path=path, keys=_read_jwks(path))
    return parties


def load_trust(path: Path) -> Trust:
    """Read and check the trust file and every JWKS it names."""
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise TrustFileError(f"cannot read trust file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise TrustFileError(f"trust file {path} is not valid TOML: {exc}") from exc
    base = path.resolve().parent
    runtime = doc.get("runtime", {})
    measurements = runtime.get("allowed_measurements", []) if isinstance(runtime, dict) else None
    if not isinstance(measurements, list) or not all(isinstance(m, str) for m in measurements):
        raise TrustFileError("[runtime] allowed_measurements must be a list of strings")
    return Trust(
        path=path.resolve(),
        issuers=_parties(doc, "issuers", base),
        attestors=_parties(doc, "attestors", base),
        allowed_measurements=frozenset(measurements),
    )
