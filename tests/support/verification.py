"""A trust world for verification tests: keys, a trust file, artifacts, a clock.

Real keys and real signatures throughout; the only stand-in is
MemoryReplayStore, a single-process ReplayStore for unit tests (the Postgres
store has its own tests against a real database).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from google.protobuf import json_format
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from govmesh.artifacts import ATTESTATION_TYP, AUDIENCE, MANDATE_TYP, PROOF_TYP
from govmesh.artifacts.canonical import b64url_decode, request_digest
from govmesh.artifacts.keys import generate_ed25519, jwk_thumbprint, public_jwk
from govmesh.client.artifacts import Initiator, SigningKey, mandate_hash, sign, signing_alg
from govmesh.v1 import common_pb2, verification_pb2
from govmesh.verification.core import (
    ReplayStoreUnavailable,
    VerificationConfig,
    VerificationInput,
    Verifier,
)
from govmesh.verification.trustsource import TrustSource

ISSUER = "https://idp.test"
SINGLE_KEY_ISSUER = "https://single.test"
ATTESTOR = "https://attestor.test"
SUBJECT = "spiffe://test/agent/1"
#: The namespaces each issuer of the world may sign for.
ISSUER_SUBJECTS = "spiffe://test/agent/"
SINGLE_KEY_SUBJECTS = "spiffe://single.test/agent/"
SINGLE_KEY_SUBJECT = SINGLE_KEY_SUBJECTS + "1"
GOOD_MEASUREMENT = "sha256:" + hashlib.sha256(b"good runtime").hexdigest()
OTHER_MEASUREMENT = "sha256:" + hashlib.sha256(b"unknown runtime").hexdigest()
ENV = {"cluster": "prod-eu", "region": "eu-west-1", "tier": 2}
ACTION = "payments.transfer"
RESOURCE = "account:acme/treasury"
CONTEXT = {"amount": 250, "currency": "EUR"}
SCOPE = [{"action": "payments.*", "resource": "account:acme/*"}]
NOW = 1_900_000_000.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def raw_token(header: Mapping[str, Any], payload: Mapping[str, Any], signature: bytes) -> str:
    """A compact JWS assembled by hand (for forms no library would sign)."""
    h = b64(json.dumps(header).encode())
    p = b64(json.dumps(payload).encode())
    return f"{h}.{p}.{b64(signature)}"


def hmac_token(header: Mapping[str, Any], payload: Mapping[str, Any], secret: bytes) -> str:
    """A compact JWS with an HS256 signature under `secret`."""
    h = b64(json.dumps(header).encode())
    p = b64(json.dumps(payload).encode())
    mac = hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64(mac)}"


def sign_escaped(key: SigningKey, header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
    """A compact JWS signed by `key` whose JSON escapes every non-ASCII character.

    Unlike `sign`, this carries what only an escape can: a lone surrogate ("\\ud800").
    """
    fields = {"alg": signing_alg(key), **header}
    signing_input = ".".join(b64(json.dumps(part).encode("ascii")) for part in (fields, claims))
    signature = JWSRegistry.algorithms[fields["alg"]].sign(signing_input.encode("ascii"), key)
    return f"{signing_input}.{b64(signature)}"


def decode_payload(token: str) -> dict[str, Any]:
    segment = token.split(".")[1]
    value: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    )
    return value


class Clock:
    """A clock that only moves when told to; `Clock.live()` follows time.time()."""

    def __init__(self, now: float = NOW) -> None:
        self.now: float | None = now

    @classmethod
    def live(cls) -> Clock:
        clock = cls()
        clock.now = None
        return clock

    def __call__(self) -> float:
        return time.time() if self.now is None else self.now


class MemoryReplayStore:
    """A ReplayStore in one process's memory (unit tests only: replicas share nothing)."""

    def __init__(self) -> None:
        self.keys: dict[bytes, float] = {}
        self.lookups = 0
        self.unavailable = False

    async def remember(self, key: bytes, expires_at: float, *, timeout: float) -> bool:
        if self.unavailable:
            raise ReplayStoreUnavailable("store down")
        if key in self.keys:
            return False
        self.keys[key] = expires_at
        return True

    async def seen(self, key: bytes, *, timeout: float) -> bool:
        if self.unavailable:
            raise ReplayStoreUnavailable("store down")
        self.lookups += 1
        return key in self.keys


def write_json(path: Path, document: object) -> None:
    """Replace `path` atomically, as an operator rotating keys should."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(document, indent=2))
    os.replace(tmp, path)


def jwks(*keys: SigningKey, kid: bool = True) -> dict[str, Any]:
    """A JWKS of the public halves of `keys` (as they declare themselves)."""
    out = []
    for key in keys:
        params = public_jwk(key.as_dict(private=False))
        if not kid:
            params.pop("kid", None)
        out.append(params)
    return {"keys": out}


def _ec(kid: str) -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": kid, "alg": "ES256", "use": "sig"})


def rsa_key(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "alg": "RS256", "use": "sig"})


@dataclass
class World:
    """Keys of an issuer (EdDSA, ES256, RS256), a single-key issuer, an attestor, an agent."""

    root: Path
    issuer: OKPKey
    issuer_es: ECKey
    issuer_rs: RSAKey
    single: OKPKey
    attestor: OKPKey
    agent: Initiator
    clock: Clock
    stranger: OKPKey = field(default_factory=lambda: generate_ed25519("issuer-ed"))

    @property
    def trust_file(self) -> Path:
        return self.root / "trust.toml"

    def write_trust(self, *, measurements: tuple[str, ...] = (GOOD_MEASUREMENT,)) -> None:
        write_json(
            self.root / "issuer.jwks.json", jwks(self.issuer, self.issuer_es, self.issuer_rs)
        )
        write_json(self.root / "single.jwks.json", jwks(self.single, kid=False))
        write_json(self.root / "attestor.jwks.json", jwks(self.attestor))
        allowed = ", ".join(f'"{m}"' for m in measurements)
        text = f"""
[[issuers]]
iss = "{ISSUER}"
jwks = "issuer.jwks.json"
subjects = ["{ISSUER_SUBJECTS}"]

[[issuers]]
iss = "{SINGLE_KEY_ISSUER}"
jwks = "single.jwks.json"
subjects = ["{SINGLE_KEY_SUBJECTS}"]

[[attestors]]
iss = "{ATTESTOR}"
jwks = "attestor.jwks.json"

[runtime]
allowed_measurements = [{allowed}]
"""
        tmp = self.root / ".trust.toml.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.trust_file)

    # -- artifacts ----------------------------------------------------------------

    def mandate_claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": SUBJECT,
            "aud": AUDIENCE,
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": str(uuid.uuid4()),
            "scope": SCOPE,
            "env": {},
            "cnf": {"jkt": self.agent.thumbprint},
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not _DROP}

    def mandate(
        self,
        *,
        key: SigningKey | None = None,
        typ: str = MANDATE_TYP,
        header: Mapping[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        key = self.issuer if key is None else key
        extra = {"kid": key.kid, **(header or {})}
        return sign(key, typ, self.mandate_claims(**claims), **extra)

    def attestation_claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": ATTESTOR,
            "sub": SUBJECT,
            "iat": now,
            "exp": now + 300,
            "cnf": {"jkt": self.agent.thumbprint},
            "env": ENV,
            "measurements": [GOOD_MEASUREMENT],
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not _DROP}

    def attestation(
        self, *, key: SigningKey | None = None, typ: str = ATTESTATION_TYP, **claims: Any
    ) -> str:
        key = self.attestor if key is None else key
        return sign(key, typ, self.attestation_claims(**claims), kid=key.kid)

    def proof(
        self,
        mandate: str,
        *,
        action: str = ACTION,
        resource: str = RESOURCE,
        context: Mapping[str, Any] | None = None,
        agent: Initiator | None = None,
        jti: str | None = None,
    ) -> str:
        agent = self.agent if agent is None else agent
        return agent.proof(
            mandate, action, resource, CONTEXT if context is None else context, jti=jti
        )

    def proof_claims(self, mandate: str, **overrides: Any) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "jti": str(uuid.uuid4()),
            "iat": int(self.clock()),
            "req": request_digest(ACTION, RESOURCE, CONTEXT),
            "ath": mandate_hash(mandate),
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not _DROP}

    def signed_proof(
        self,
        mandate: str,
        *,
        key: SigningKey | None = None,
        jwk: Mapping[str, Any] | None = None,
        typ: str = PROOF_TYP,
        **claims: Any,
    ) -> str:
        """A proof built field by field: signed by `key`, carrying `jwk`."""
        key = self.agent.key if key is None else key
        header_jwk = self.agent.public_jwk if jwk is None else dict(jwk)
        return sign(key, typ, self.proof_claims(mandate, **claims), jwk=header_jwk)

    def request(
        self,
        *,
        mandate: str | None = None,
        proof: str | None = None,
        attestation: str = "",
        action: str = ACTION,
        resource: str = RESOURCE,
        context: Mapping[str, Any] | None = None,
        digest: str | None = None,
    ) -> VerificationInput:
        context = CONTEXT if context is None else context
        mandate = self.mandate() if mandate is None else mandate
        if proof is None:
            proof = self.proof(mandate, action=action, resource=resource, context=context)
        return VerificationInput(
            request_digest=request_digest(action, resource, context) if digest is None else digest,
            action=action,
            resource=resource,
            context=context,
            mandate=mandate,
            proof=proof,
            attestation=attestation,
        )

    def rs256_public_pem(self) -> bytes:
        public = self.issuer_rs.get_op_key("verify")
        return public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    # -- verifiers ----------------------------------------------------------------------

    def verifier(
        self,
        *,
        replay: Any = None,
        cache_size: int = 1000,
        skew: float = 5.0,
        window: float = 60.0,
    ) -> tuple[Verifier, TrustSource, Any]:
        source = TrustSource(self.trust_file, cache_size=cache_size)
        store = MemoryReplayStore() if replay is None else replay
        verifier = Verifier(
            trust=source,
            replay=store,
            clock=self.clock,
            config=VerificationConfig(clock_skew_s=skew, proof_window_s=window),
        )
        return verifier, source, store


def rsa_jwk(modulus: int, exponent: int = 65537) -> dict[str, Any]:
    """The public JWK of an RSA key with these parameters (nothing checks they make one)."""

    def octets(value: int) -> str:
        return b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))

    return {"kty": "RSA", "n": octets(modulus), "e": octets(exponent)}


def odd_modulus(bits: int) -> int:
    """A modulus of exactly `bits` bits: as costly to verify with as a real one."""
    return secrets.randbits(bits) | (1 << (bits - 1)) | 1


#: The costliest proof key a 16 KB token could carry before keys were bounded: the
#: longest modulus for which OpenSSL accepts any exponent, and an exponent nearly as long.
COSTLY_MODULUS_BITS = 3072
COSTLY_EXPONENT_BITS = 3070


def costly_jwk() -> dict[str, Any]:
    """A proof key of the costliest kind: a 3,072-bit modulus, an exponent nearly as long."""
    exponent = secrets.randbits(COSTLY_EXPONENT_BITS) | (1 << (COSTLY_EXPONENT_BITS - 1)) | 1
    return rsa_jwk(odd_modulus(COSTLY_MODULUS_BITS), exponent)


def costly_proof(jwk: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
    """A proof carrying `jwk` whose signature is a number below the modulus.

    Verifying it runs the whole exponentiation before the padding is found wrong.
    """
    modulus = int.from_bytes(b64url_decode(jwk["n"]), "big")
    signature = (modulus - 2).to_bytes((modulus.bit_length() + 7) // 8, "big")
    return raw_token({"alg": "RS256", "typ": PROOF_TYP, "jwk": dict(jwk)}, claims, signature)


def costly_request(world: World) -> VerificationInput:
    """A forged mandate and a proof whose header key costs the most to verify with.

    The mandate names the costly key's thumbprint, so that only signatures
    tell the request from a genuine one.
    """
    jwk = costly_jwk()
    mandate = world.mandate(key=world.stranger, cnf={"jkt": jwk_thumbprint(jwk)})
    return world.request(mandate=mandate, proof=costly_proof(jwk, world.proof_claims(mandate)))


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


#: Pass as a claim value to leave the claim out.
_DROP: Any = _Drop()
DROP = _DROP


_KEYS: dict[str, Any] = {}


def _keys() -> dict[str, Any]:
    # RSA generation is slow; every world in one test process shares these keys.
    if not _KEYS:
        _KEYS.update(
            issuer=generate_ed25519("issuer-ed"),
            issuer_es=_ec("issuer-es"),
            issuer_rs=rsa_key("issuer-rs"),
            single=OKPKey.generate_key("Ed25519"),
            attestor=generate_ed25519("attestor-1"),
            agent=generate_ed25519(),
        )
    return _KEYS


def make_world(root: Path, *, clock: Clock | None = None) -> World:
    """A world with its trust file written under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    clock = clock or Clock(time.time())
    keys = _keys()
    world = World(
        root=root,
        issuer=keys["issuer"],
        issuer_es=keys["issuer_es"],
        issuer_rs=keys["issuer_rs"],
        single=keys["single"],
        attestor=keys["attestor"],
        agent=Initiator(keys["agent"], clock=clock),
        clock=clock,
    )
    world.write_trust()
    return world


def verify_request(request: VerificationInput) -> verification_pb2.VerifyRequest:
    """The wire form of `request`."""
    message = verification_pb2.VerifyRequest(
        request_digest=request.request_digest,
        action=request.action,
        resource=request.resource,
        mandate=request.mandate,
        proof=request.proof,
        attestation=request.attestation,
    )
    if request.context is not None:
        json_format.ParseDict(dict(request.context), message.context)
    return message


def failed_checks(answer: verification_pb2.VerifyResponse) -> list[str]:
    """The names of the failed checks of an answer, in its order."""
    return [c.name for c in answer.checks if c.verdict != common_pb2.CHECK_PASSED]


def reason(answer: verification_pb2.VerifyResponse) -> str:
    return common_pb2.DenyReason.Name(answer.reason)
