"""A complete development trust setup on disk (`govmesh keys init DIR`).

    DIR/trust.toml             the trust file (GOVMESH_TRUST_FILE)
    DIR/*.jwks.json            public keys the trust file and verifiers name
    DIR/lineage.vkey           the C2SP verifier key of the lineage checkpoints
                               (what `govmesh lineage verify|check-proof` trust)
    DIR/keys/                  govmesh's own signing keys (GOVMESH_KEYS_DIR)
    DIR/dev/                   the private keys of the parties govmesh trusts:
                               a development issuer, attestor and agent
    DIR/policies/sample.cedar  a sample policy

In production the issuer, attestor and agent keys live with those parties,
never beside govmesh; here they sit in dev/ so that one person can play
every role.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from joserfc.jwk import OKPKey

from govmesh.artifacts.keys import (
    generate_ed25519,
    load_private_jwk,
    public_jwks,
    write_private_jwk,
)
from govmesh.lineage.keys import DEFAULT_ORIGIN, VKEY_FILE, log_vkey
from govmesh.runtime.errors import ConfigurationError

DEV_ISSUER = "https://issuer.govmesh.dev"
DEV_ATTESTOR = "https://attestor.govmesh.dev"
#: The subject namespace the development issuer may sign for.
DEV_SUBJECTS = "spiffe://govmesh.dev/agent/"
DEV_SUBJECT = DEV_SUBJECTS + "demo"
DEV_ENV = {"cluster": "dev", "region": "local"}
#: The measurement of the development runtime that the sample trust file allows.
DEV_MEASUREMENT = "sha256:" + hashlib.sha256(b"govmesh development runtime").hexdigest()

#: govmesh's own keys, by file name in GOVMESH_KEYS_DIR.
SERVICE_KEYS = ("engine", "lineage", "policy-admin")

SAMPLE_POLICY = """\
// Sample govmesh policy. Principal, action and resource are
// Agent::"<mandate sub>" (a member of Issuer::"<mandate iss>"),
// Action::"<action>" and Resource::"<resource>";
// context is {request: <request context>, env: <attested env>, attribution: <mandate att>}.

// Agents may move up to 1,000 at a time.
@id("transfers-up-to-1000")
permit (principal, action == Action::"payments.transfer", resource)
when { context.request has amount && context.request.amount <= 1000 };

// Nothing touches a frozen account, whatever else permits it.
@id("frozen-accounts")
forbid (principal, action, resource == Resource::"account:acme/frozen");
"""


@dataclass(frozen=True)
class DevSetup:
    """Where everything of a development setup lives."""

    root: Path

    @property
    def trust_file(self) -> Path:
        return self.root / "trust.toml"

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def lineage_vkey(self) -> Path:
        """The lineage log's C2SP verifier key (origin DEFAULT_ORIGIN)."""
        return self.root / VKEY_FILE

    @property
    def policies(self) -> Path:
        return self.root / "policies"

    def dev_key(self, name: str) -> OKPKey:
        """A development party's private key: issuer, attestor or agent."""
        return load_private_jwk(self.root / "dev" / f"{name}.jwk.json")

    def exists(self) -> bool:
        return self.trust_file.is_file() and (self.root / "dev" / "agent.jwk.json").is_file()


def write_dev_setup(root: Path) -> DevSetup:
    """Write fresh keys, JWKS files, a trust file and a sample policy into `root`.

    Refuses to overwrite an existing setup, so that keys in use are never
    replaced by accident.
    """
    setup = DevSetup(root.resolve())
    if setup.trust_file.exists():
        raise ConfigurationError(f"{setup.trust_file} exists; not overwriting a trust setup")
    root.mkdir(parents=True, exist_ok=True)
    for name in ("issuer", "attestor", "agent"):
        key = generate_ed25519()
        write_private_jwk(setup.root / "dev" / f"{name}.jwk.json", key)
        if name != "agent":
            _write_json(setup.root / f"{name}.jwks.json", public_jwks([key]))
    for name in SERVICE_KEYS:
        key = generate_ed25519()
        write_private_jwk(setup.keys_dir / f"{name}.jwk.json", key)
        _write_json(setup.root / f"{name}.jwks.json", public_jwks([key]))
        if name == "lineage":
            setup.lineage_vkey.write_text(log_vkey(key, DEFAULT_ORIGIN) + "\n")
    setup.trust_file.write_text(
        f"""\
# govmesh trust configuration (DESIGN.md section 4); paths are relative to this file.

# Each issuer signs for its own subject namespaces ("/"-ended prefixes, or
# exact subjects), and each attestor attests only the environment values it
# lists; required, and disjoint, once more than one of either is trusted.
[[issuers]]
iss = "{DEV_ISSUER}"
jwks = "issuer.jwks.json"
subjects = ["{DEV_SUBJECTS}"]

[[attestors]]
iss = "{DEV_ATTESTOR}"
jwks = "attestor.jwks.json"
env = {{ {_toml_env(DEV_ENV)} }}

[runtime]
allowed_measurements = ["{DEV_MEASUREMENT}"]

# The policy-admin keys whose signatures the policy authority accepts on
# bundles and activations (govmesh policy push/activate).
[policy]
admin_jwks = "policy-admin.jwks.json"
"""
    )
    setup.policies.mkdir(exist_ok=True)
    (setup.policies / "sample.cedar").write_text(SAMPLE_POLICY)
    return setup


def _toml_env(env: dict[str, str]) -> str:
    """`env` as the values of an attestor's TOML `env` table (json strings are TOML strings)."""
    return ", ".join(f"{key} = [{json.dumps(value)}]" for key, value in env.items())


def _write_json(path: Path, document: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
