"""The trust configuration (DESIGN.md section 4): one TOML file, paths relative to it.

    [[issuers]]                 # who may sign mandates
    iss = "https://idp.example"
    jwks = "issuer.jwks.json"
    subjects = ["spiffe://acme.example/agent/"]       # the subs it may sign for

    [[attestors]]               # who may sign attestations
    iss = "https://attestor.example"
    jwks = "attestor.jwks.json"
    env = { cluster = ["prod-eu-1", "prod-us-1"] }    # the env values it may attest

    [runtime]
    allowed_measurements = ["sha256:9f86d0..."]

A subject names one agent whoever signed the mandate, so each issuer's
`subjects` bounds the subs it may sign for: an entry ending in "/" is a
namespace (every sub that starts with it, so "spiffe://a/agent/" never
reaches "spiffe://a/agentX"), any other entry one exact sub. Likewise each
attestor's `env` lists, per environment key, the string values it may attest;
an attestation carrying a key the attestor did not declare, or a value not
listed for it, is not vouched for. The file is refused when two issuers'
namespaces overlap (equal, or one inside the other), when two attestors may
attest the same value of the same key, or when more than one issuer (or
attestor) is trusted and one of them does not declare its namespaces (or
values). A single issuer without `subjects` may sign for any sub, and a
single attestor without `env` may attest anything: nobody else could be
confused with it.

Every key is pinned to exactly one algorithm. An Ed25519 key verifies EdDSA
(whether or not it says so); an EC P-256 key verifies ES256 and an RSA key
RS256 only when its JWK declares that `alg`. Keys that declare anything else,
that are for encryption, or whose type govmesh does not accept are ignored
(they never verify) and reported in `Trust.notes`. A JWKS with private or
symmetric key material, duplicate kids, no usable key, or an RS256 key outside
the cost bounds (`check_key_cost`) is refused, as is the whole trust file with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey, OKPKey, RSAKey, import_key

from govmesh.artifacts.canonical import b64url_decode
from govmesh.runtime.errors import ConfigurationError, InvalidInput

#: The JWS algorithms govmesh verifies.
SIGNATURE_ALGS = frozenset({"EdDSA", "ES256", "RS256"})
#: The RSA moduli accepted, in bits: no weaker, and no costlier to verify with.
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 4096
#: The one RSA public exponent accepted. A verification costs one modular
#: exponentiation by e: 65537 takes 17 multiplications, while an exponent as
#: long as the modulus (which RFC 7518 and most libraries allow) takes thousands.
RSA_PUBLIC_EXPONENT = 65537
#: The form of an allowed measurement.
MEASUREMENT = re.compile(r"sha256:[0-9a-f]{64}")

#: Members of a JWK that carry private or symmetric key material.
_SECRET_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# [policy] names the policy-admin keys; the policy authority reads it
# (govmesh.artifacts.signing), verification passes over it.
_KNOWN_TOP_LEVEL = frozenset({"issuers", "attestors", "runtime", "policy"})

VerifyingKey = OKPKey | ECKey | RSAKey

#: What each kind of party declares it may vouch for.
_DECLARES = {"issuers": "subjects", "attestors": "env"}
_ONE_ONLY = {
    "issuers": "a subject may belong to one issuer only",
    "attestors": "an environment value may be attested by one attestor only",
}
_ENV_EXAMPLE = 'env = { cluster = ["prod-eu-1"] }'


class TrustFileError(ConfigurationError):
    """A trust file, or a JWKS file it names, that cannot be used."""


@dataclass(frozen=True)
class TrustedKey:
    """One public key of a trusted party, pinned to one algorithm."""

    kid: str | None
    alg: str
    jwk: Mapping[str, Any]
    key: VerifyingKey = field(repr=False)


@dataclass(frozen=True)
class TrustedParty:
    """An issuer or attestor and its usable public keys.

    `subjects` (issuers) and `env` (attestors) are what the party may vouch
    for; None when undeclared, which the loader allows only for a party that
    is the single one of its kind.
    """

    iss: str
    jwks_path: Path
    keys: tuple[TrustedKey, ...]
    subjects: tuple[str, ...] | None = None
    env: Mapping[str, frozenset[str]] | None = None

    def may_issue_for(self, sub: str) -> bool:
        """Whether `sub` is inside this issuer's subject namespaces."""
        if self.subjects is None:
            return True
        return any(subject_in(sub, entry) for entry in self.subjects)

    def unattestable(self, env: Mapping[str, object]) -> list[str]:
        """The claims of `env` this attestor may not attest, as `key=value` (empty: all may)."""
        if self.env is None:
            return []
        return [
            f"{key}={value!r}"
            for key, value in sorted(env.items())
            if not isinstance(value, str) or value not in self.env.get(key, frozenset())
        ]

    def key_for(self, kid: object) -> TrustedKey | None:
        """The key a JWS header's `kid` names.

        A header kid must name one of the keys exactly. A header without kid
        may use a key without kid only when that key is the party's single key.
        """
        if kid is None:
            if len(self.keys) == 1 and self.keys[0].kid is None:
                return self.keys[0]
            return None
        if not isinstance(kid, str):
            return None
        for key in self.keys:
            if key.kid == kid:
                return key
        return None


@dataclass(frozen=True)
class Trust:
    """Everything the trust file says, with the JWKS files read.

    `version` is the SHA-256 of the trust file and every JWKS file it names,
    so two loads of the same bytes have the same version. `files` are the
    files it was read from (the trust file first), which a watcher stats.
    """

    path: Path
    issuers: dict[str, TrustedParty]
    attestors: dict[str, TrustedParty]
    allowed_measurements: frozenset[str] = field(default_factory=frozenset)
    version: str = ""
    files: tuple[Path, ...] = ()
    notes: tuple[str, ...] = ()


def subject_in(sub: str, entry: str) -> bool:
    """Whether `sub` is within one `subjects` entry: a "/"-ended namespace, or one exact sub."""
    return sub.startswith(entry) if entry.endswith("/") else sub == entry


def _entries_overlap(a: str, b: str) -> bool:
    """Whether some sub is within both entries."""
    return subject_in(a, b) or subject_in(b, a)


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TrustFileError(f"cannot read {what} {path}: {exc.strerror}") from exc


class KeyCostError(InvalidInput, ValueError):
    """A key whose parameters put the cost of verifying with it out of bounds."""


def _rsa_integer(params: Mapping[str, Any], name: str, max_chars: int, too_long: str) -> int:
    # The length is bounded before decoding: a 100 KB member costs nothing to refuse.
    text = params.get(name)
    if not isinstance(text, str) or not text:
        raise ValueError(f"RSA member {name!r} is not a string")
    if len(text) > max_chars:
        raise KeyCostError(too_long)
    try:
        return int.from_bytes(b64url_decode(text), "big")
    except ValueError:
        raise ValueError(f"RSA member {name!r} is not base64url") from None


def check_key_cost(params: Mapping[str, Any]) -> None:
    """Refuse, before anything imports it, a key too costly (or too weak) to verify with.

    Ed25519 and P-256 verifications cost the same for every key. An RSA
    verification costs in proportion to the length of the public exponent and
    the square of the modulus length, both chosen by whoever made the key:
    only e = 65537 and a 2048-4096-bit modulus are accepted, which bounds a
    verification to about the cost of an Ed25519 one. KeyCostError otherwise,
    ValueError for members that are no base64url string.
    """
    if params.get("kty") != "RSA":
        return
    too_long = f"RSA key longer than {MAX_RSA_BITS} bits"
    # base64url of 512 octets (4096 bits) is 683 characters; one zero octet more is let through.
    n = _rsa_integer(params, "n", 4 * (MAX_RSA_BITS // 8 + 1) // 3 + 1, too_long)
    not_f4 = f"RSA public exponent is not {RSA_PUBLIC_EXPONENT}"
    if _rsa_integer(params, "e", 8, not_f4) != RSA_PUBLIC_EXPONENT:
        raise KeyCostError(not_f4)
    bits = n.bit_length()
    if bits < MIN_RSA_BITS:
        raise KeyCostError(f"RSA key of {bits} bits is shorter than {MIN_RSA_BITS}")
    if bits > MAX_RSA_BITS:
        raise KeyCostError(f"RSA key of {bits} bits is longer than {MAX_RSA_BITS}")


def usable_key(params: Mapping[str, Any]) -> tuple[str, VerifyingKey]:
    """The one algorithm `params` verifies, and the key; ValueError if it verifies none.

    KeyCostError (a ValueError) when the key would verify but costs too much to.
    """
    kty, declared = params.get("kty"), params.get("alg")
    use, ops = params.get("use"), params.get("key_ops")
    if use is not None and use != "sig":
        raise ValueError(f"use {use!r} is not sig")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise ValueError("key_ops does not allow verify")
    if kty == "OKP":
        if params.get("crv") != "Ed25519":
            raise ValueError(f"OKP curve {params.get('crv')!r} is not Ed25519")
        if declared not in (None, "EdDSA"):
            raise ValueError(f"an Ed25519 key cannot be used with alg {declared!r}")
        alg = "EdDSA"
    elif kty == "EC":
        if params.get("crv") != "P-256" or declared != "ES256":
            raise ValueError("an EC key is used only as a P-256 key that declares alg ES256")
        alg = "ES256"
    elif kty == "RSA":
        if declared != "RS256":
            raise ValueError("an RSA key is used only when it declares alg RS256")
        alg = "RS256"
    else:
        raise ValueError(f"key type {kty!r} is not accepted")
    check_key_cost(params)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            key = import_key(dict(params))
    except Exception as exc:  # joserfc raises several types for bad material
        raise ValueError(f"not a valid {kty} key: {exc}") from None
    if not isinstance(key, OKPKey | ECKey | RSAKey) or key.is_private:
        raise ValueError("not a public signature key")
    return alg, key


def _read_jwks(path: Path, raw: bytes, notes: list[str]) -> tuple[TrustedKey, ...]:
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise TrustFileError(f"JWKS {path} is not JSON") from exc
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not all(isinstance(k, dict) for k in entries):
        raise TrustFileError(f"JWKS {path} has no keys array")
    keys: list[TrustedKey] = []
    kids: set[str] = set()
    for position, params in enumerate(entries):
        if _SECRET_MEMBERS & set(params):
            raise TrustFileError(f"JWKS {path} contains private or symmetric key material")
        kid = params.get("kid")
        if kid is not None and (not isinstance(kid, str) or not kid):
            raise TrustFileError(f"JWKS {path}: key {position} has a kid that is not a string")
        if kid is not None:
            if kid in kids:
                raise TrustFileError(f"JWKS {path} lists kid {kid!r} twice")
            kids.add(kid)
        try:
            alg, key = usable_key(params)
        except KeyCostError as exc:
            # Not ignored like a key for something else: this key is meant to
            # verify, and every verification with it would be slow.
            raise TrustFileError(
                f"JWKS {path}: key {kid or position}: {exc}; govmesh verifies with RSA keys"
                f" only with e = {RSA_PUBLIC_EXPONENT} and a {MIN_RSA_BITS}-{MAX_RSA_BITS}-bit"
                " modulus"
            ) from None
        except ValueError as exc:
            notes.append(f"{path}: key {kid or position} ignored: {exc}")
            continue
        keys.append(TrustedKey(kid=kid, alg=alg, jwk=dict(params), key=key))
    if not keys:
        raise TrustFileError(f"JWKS {path} has no key govmesh can verify with")
    return tuple(keys)


def _parties(
    doc: dict[str, Any],
    section: str,
    base: Path,
    hashed: Any,
    files: list[Path],
    notes: list[str],
) -> dict[str, TrustedParty]:
    entries = doc.get(section, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise TrustFileError(f"[[{section}]] must be an array of tables")
    parties: dict[str, TrustedParty] = {}
    for entry in entries:
        iss, jwks = entry.get("iss"), entry.get("jwks")
        if not isinstance(iss, str) or not iss or not isinstance(jwks, str) or not jwks:
            raise TrustFileError(f"every [[{section}]] needs iss and jwks")
        if iss in parties:
            raise TrustFileError(f"[[{section}]] lists {iss!r} twice")
        declares = _DECLARES[section]
        unknown = set(entry) - {"iss", "jwks", declares}
        if unknown:
            notes.append(f"[[{section}]] {iss!r}: unknown keys {sorted(unknown)} ignored")
        declared = entry.get(declares)
        # Not resolved: a Kubernetes ConfigMap updates by swapping a symlink,
        # and the path must keep naming the file, not its old target.
        path = Path(os.path.normpath(base / jwks))
        raw = _read_bytes(path, "JWKS")
        hashed.update(str(path).encode() + b"\0" + hashlib.sha256(raw).digest())
        files.append(path)
        parties[iss] = TrustedParty(
            iss=iss,
            jwks_path=path,
            keys=_read_jwks(path, raw, notes),
            subjects=(
                _subjects(iss, declared) if section == "issuers" and declared is not None else None
            ),
            env=_env(iss, declared) if section == "attestors" and declared is not None else None,
        )
    _check_disjoint(section, parties)
    return parties


def _subjects(iss: str, value: object) -> tuple[str, ...]:
    where = f"[[issuers]] {iss!r}: subjects"
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise TrustFileError(f"{where} must be a list of non-empty strings")
    if not value:
        raise TrustFileError(f"{where} is empty: the issuer could sign for nobody")
    return tuple(dict.fromkeys(value))


def _env(iss: str, value: object) -> dict[str, frozenset[str]]:
    where = f"[[attestors]] {iss!r}: env"
    if not isinstance(value, dict) or not value:
        raise TrustFileError(f"{where} must be a table of environment keys, e.g. {_ENV_EXAMPLE}")
    env: dict[str, frozenset[str]] = {}
    for key, values in value.items():
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, str) and v for v in values)
        ):
            raise TrustFileError(f"{where}.{key} must be a non-empty list of strings")
        env[key] = frozenset(values)
    return env


def _check_disjoint(section: str, parties: Mapping[str, TrustedParty]) -> None:
    """The load-time rules: several parties each declare their bounds, and no two overlap."""
    declares = _DECLARES[section]
    if len(parties) > 1:
        undeclared = sorted(
            iss
            for iss, party in parties.items()
            if (party.subjects if section == "issuers" else party.env) is None
        )
        if undeclared:
            raise TrustFileError(
                f"[[{section}]]: with more than one trusted, each must declare `{declares}`; "
                f"{', '.join(repr(i) for i in undeclared)} does not"
            )
    ordered = sorted(parties.values(), key=lambda p: p.iss)
    for n, first in enumerate(ordered):
        for second in ordered[n + 1 :]:
            if section == "issuers":
                clashes = [
                    f"{a!r} and {b!r}"
                    for a in first.subjects or ()
                    for b in second.subjects or ()
                    if _entries_overlap(a, b)
                ]
            else:
                ours, theirs = first.env or {}, second.env or {}
                clashes = [
                    f"{key} = {value!r}"
                    for key in sorted(ours.keys() & theirs.keys())
                    for value in sorted(ours[key] & theirs[key])
                ]
            if clashes:
                raise TrustFileError(
                    f"[[{section}]] {first.iss!r} and {second.iss!r} overlap in `{declares}` "
                    f"({'; '.join(clashes)}): {_ONE_ONLY[section]}"
                )


def load_trust(path: Path) -> Trust:
    """Read and check the trust file and every JWKS it names."""
    path = path.absolute()
    raw = _read_bytes(path, "trust file")
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TrustFileError(f"trust file {path} is not valid TOML: {exc}") from exc
    notes: list[str] = []
    unknown = set(doc) - _KNOWN_TOP_LEVEL
    if unknown:
        notes.append(f"{path}: unknown keys {sorted(unknown)} ignored")
    hashed = hashlib.sha256(hashlib.sha256(raw).digest())
    files = [path]
    base = path.parent
    runtime = doc.get("runtime", {})
    measurements = runtime.get("allowed_measurements", []) if isinstance(runtime, dict) else None
    if not isinstance(measurements, list) or not all(isinstance(m, str) for m in measurements):
        raise TrustFileError("[runtime] allowed_measurements must be a list of strings")
    for measurement in measurements:
        if not MEASUREMENT.fullmatch(measurement):
            raise TrustFileError(
                f"[runtime] allowed_measurements: {measurement!r} is not sha256:<64 hex digits>"
            )
    issuers = _parties(doc, "issuers", base, hashed, files, notes)
    attestors = _parties(doc, "attestors", base, hashed, files, notes)
    return Trust(
        path=path,
        issuers=issuers,
        attestors=attestors,
        allowed_measurements=frozenset(measurements),
        version=hashed.hexdigest(),
        files=tuple(files),
        notes=tuple(notes),
    )


def file_state(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int, int] | None, ...]:
    """What stat says about `paths`: changes whenever a file is replaced or rewritten.

    (inode, size, mtime, ctime) in nanoseconds; None for a file that is gone.
    Symlinks are followed, so swapping a link to a new target counts as a change.
    """
    states: list[tuple[int, int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            states.append(None)
            continue
        states.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(states)
