"""Policy bundles: their canonical content, version, signatures and compilation.

A bundle is Cedar policies (one or many files), an optional Cedar schema and
string metadata. Its canonical content is the RFC 8785 (JCS) serialization of

    {"format": "govmesh.policy-bundle/1",
     "policies": [{"name": "a.cedar", "text": "..."}, ...],   # sorted by name
     "schema": {"format": "cedar" | "json", "text": "..."} | null,
     "metadata": {"name": "...", ...}}

and its version is the SHA-256 of those bytes, in hex. A policy admin signs
the version (a compact JWS, typ `govmesh-policy-bundle+jwt`, claims
{"ver": version, "iat": ...}); who signed and when is therefore not part of
the content, and the same policies always have the same version.

Compiling a bundle parses every policy, refuses templates, duplicate ids and
an empty set, validates the policies against the schema when there is one,
and builds the scope index. A bundle that does not compile is refused whole.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cedarpy

from govmesh.artifacts.canonical import CanonicalizationError, canonical_json
from govmesh.policy.entities import ISSUER_TYPE, PRINCIPAL_TYPE, request_entities
from govmesh.policy.index import (
    EntityUid,
    PolicyScope,
    ScopeIndex,
    action_ancestors,
    policy_scope,
)
from govmesh.runtime.errors import InvalidInput

BUNDLE_FORMAT = "govmesh.policy-bundle/1"

#: What a bundle's canonical content may weigh: it travels in one gRPC message.
MAX_BUNDLE_BYTES = 3 * 1024 * 1024

#: A bundle folder's optional metadata file: a JSON object of strings.
METADATA_FILE = "bundle.json"
#: Schema files, in Cedar's human-readable and JSON formats.
SCHEMA_SUFFIXES = {".cedarschema": "cedar", ".cedarschema.json": "json"}

_VERSION = re.compile(r"^[0-9a-f]{64}$")


class BundleRejected(InvalidInput, ValueError):
    """A bundle that cannot be published: the message says exactly why."""


def is_version(text: str) -> bool:
    """Whether `text` is a full bundle version (64 lowercase hex digits)."""
    return bool(_VERSION.match(text))


@dataclass(frozen=True)
class PolicyFile:
    """One Cedar policy file of a bundle."""

    name: str
    text: str


@dataclass(frozen=True)
class SchemaFile:
    """The optional Cedar schema of a bundle."""

    format: str  # "cedar" or "json"
    text: str


@dataclass(frozen=True)
class BundleSource:
    """A bundle's content, before or after signing."""

    policies: tuple[PolicyFile, ...]
    schema: SchemaFile | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        """The JSON document whose canonical form is hashed and stored."""
        return {
            "format": BUNDLE_FORMAT,
            "policies": [
                {"name": p.name, "text": p.text} for p in sorted(self.policies, key=_by_name)
            ],
            "schema": (
                None
                if self.schema is None
                else {"format": self.schema.format, "text": self.schema.text}
            ),
            "metadata": dict(self.metadata),
        }

    def canonical(self) -> bytes:
        """The RFC 8785 canonical content."""
        return canonical_json(self.document())

    @property
    def version(self) -> str:
        """SHA-256 of the canonical content, lowercase hex."""
        return hashlib.sha256(self.canonical()).hexdigest()


def _by_name(policy: PolicyFile) -> str:
    return policy.name


def read_bundle_source(path: Path) -> BundleSource:
    """A bundle from disk: a .cedar file, or a folder.

    A folder contributes every `*.cedar` file below it (names relative to the
    folder), at most one `*.cedarschema` or `*.cedarschema.json` schema at its
    top, and an optional `bundle.json` object of string metadata. Raises
    BundleRejected when nothing usable is there.
    """
    try:
        if path.is_file():
            return BundleSource(policies=(PolicyFile(path.name, path.read_text()),))
        if not path.is_dir():
            raise BundleRejected(f"no policy file or folder at {path}")
        files = sorted(
            p
            for p in path.rglob("*.cedar")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        policies = tuple(PolicyFile(p.relative_to(path).as_posix(), p.read_text()) for p in files)
        schemas = [
            (p, fmt)
            for p in sorted(path.iterdir())
            for suffix, fmt in SCHEMA_SUFFIXES.items()
            if p.is_file() and p.name.endswith(suffix) and not p.name.startswith(".")
        ]
        if len(schemas) > 1:
            names = ", ".join(p.name for p, _ in schemas)
            raise BundleRejected(f"{path} holds more than one schema: {names}")
        schema = SchemaFile(schemas[0][1], schemas[0][0].read_text()) if schemas else None
        metadata = _read_metadata(path / METADATA_FILE)
    except OSError as exc:
        raise BundleRejected(f"cannot read policies at {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise BundleRejected(f"policies at {path} are not UTF-8 text") from exc
    if not policies:
        raise BundleRejected(f"no .cedar files in {path}")
    return BundleSource(policies=policies, schema=schema, metadata=metadata)


def _read_metadata(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        document = json.loads(path.read_text())
    except ValueError as exc:
        raise BundleRejected(f"{path} is not JSON: {exc}") from exc
    return _metadata(document, str(path))


def _metadata(document: object, where: str) -> dict[str, str]:
    if not isinstance(document, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in document.items()
    ):
        raise BundleRejected(f"{where}: metadata must be an object of strings")
    return dict(document)


def parse_bundle_content(content: bytes) -> BundleSource:
    """The bundle whose canonical content is `content`.

    Refuses anything that is not exactly the canonical form of a well-formed
    bundle document, so that one version names one byte string.
    """
    if len(content) > MAX_BUNDLE_BYTES:
        raise BundleRejected(f"bundle is larger than {MAX_BUNDLE_BYTES} bytes")
    try:
        document = json.loads(content)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleRejected(f"bundle content is not JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != BUNDLE_FORMAT:
        raise BundleRejected(f"bundle content is not a {BUNDLE_FORMAT} document")
    if set(document) != {"format", "policies", "schema", "metadata"}:
        raise BundleRejected("bundle content has missing or unknown members")
    raw_policies = document["policies"]
    if not isinstance(raw_policies, list):
        raise BundleRejected("bundle policies must be a list")
    policies = []
    for item in raw_policies:
        if (
            not isinstance(item, dict)
            or set(item) != {"name", "text"}
            or not isinstance(item["name"], str)
            or not item["name"]
            or not isinstance(item["text"], str)
        ):
            raise BundleRejected("every bundle policy file needs a name and a text")
        policies.append(PolicyFile(item["name"], item["text"]))
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        raise BundleRejected("bundle lists a policy file twice")
    raw_schema = document["schema"]
    schema = None
    if raw_schema is not None:
        if (
            not isinstance(raw_schema, dict)
            or set(raw_schema) != {"format", "text"}
            or raw_schema["format"] not in ("cedar", "json")
            or not isinstance(raw_schema["text"], str)
        ):
            raise BundleRejected('bundle schema must be {"format": "cedar"|"json", "text": ...}')
        schema = SchemaFile(raw_schema["format"], raw_schema["text"])
    source = BundleSource(
        policies=tuple(policies),
        schema=schema,
        metadata=_metadata(document["metadata"], "bundle"),
    )
    try:
        canonical = source.canonical()
    except CanonicalizationError as exc:
        raise BundleRejected(f"bundle content has no canonical form: {exc}") from exc
    if canonical != content:
        raise BundleRejected("bundle content is not in canonical (RFC 8785) form")
    return source


# --- compilation -----------------------------------------------------------------


@dataclass(frozen=True)
class CompiledPolicy:
    """One policy of a compiled bundle, known by its stable id."""

    id: str
    effect: str  # "permit" or "forbid"
    file: str
    est: str  # Cedar's JSON form of the policy, serialized (strings cost the GC nothing)
    scope: PolicyScope


@dataclass(frozen=True, eq=False)
class CompiledBundle:
    """A bundle ready to evaluate: every policy parsed, validated and indexed.

    Policy ids are the policy's `@id` annotation when it has one, else
    `<file>:policy<N>` (Cedar's own positional id within that file).
    """

    version: str
    source: BundleSource
    policies: tuple[CompiledPolicy, ...]
    effects: Mapping[str, str]
    full_set: Any  # cedarpy.PolicySet of every policy: the unindexed evaluation
    schema: Any  # cedarpy.Schema | None
    index: ScopeIndex

    @property
    def policy_ids(self) -> tuple[str, ...]:
        return tuple(p.id for p in self.policies)


def policy_set_of(policies: Mapping[str, str]) -> Any:
    """A cedarpy PolicySet of `policies` (id → serialized Cedar JSON form), ids kept.

    A large set is parsed without the GIL, so that a replica compiling a new
    bundle keeps answering meanwhile. Small ones keep it: taking the GIL back
    costs up to a switch interval (5 ms) when the event loop is busy, which
    would make the thousands of small bucket sets of a big bundle crawl.
    """
    members = ",".join(f"{json.dumps(policy_id)}:{est}" for policy_id, est in policies.items())
    return cedarpy.PolicySet.from_json_str(
        '{"staticPolicies":{' + members + '},"templates":{},"templateLinks":[]}',
        release_gil=len(policies) > 256,
    )


def _positional(policy_id: str) -> int:
    return int(policy_id.removeprefix("policy"))


def _parse_file(policy_file: PolicyFile) -> list[tuple[str, dict[str, Any]]]:
    try:
        parsed = json.loads(cedarpy.policies_to_json_str(policy_file.text))
    except ValueError as exc:
        raise BundleRejected(f"{policy_file.name} does not parse: {exc}") from exc
    if parsed.get("templates"):
        raise BundleRejected(
            f"{policy_file.name} holds a template (?principal or ?resource); "
            "bundles hold only static policies"
        )
    static = parsed.get("staticPolicies", {})
    return sorted(static.items(), key=lambda item: _positional(item[0]))


def _schema(source: BundleSource) -> Any:
    if source.schema is None:
        return None
    try:
        if source.schema.format == "json":
            return cedarpy.Schema.from_json_str(source.schema.text)
        return cedarpy.Schema.from_str(source.schema.text)
    except ValueError as exc:
        raise BundleRejected(f"the schema does not parse: {exc}") from exc


def _check_request_entities(schema: Any) -> None:
    """Refuse a schema under which no request could be evaluated.

    Every request carries its principal, a member of its issuer; a schema that
    does not declare them so (or requires attributes of them, which govmesh
    never has) would make Cedar refuse every request: better said at publish.
    """
    probe = json.dumps(request_entities("probe", "probe"))
    try:
        cedarpy.Entities.from_json_str(probe, schema)
    except ValueError as exc:
        raise BundleRejected(
            f"the schema must declare `entity {ISSUER_TYPE};` and "
            f"`entity {PRINCIPAL_TYPE} in [{ISSUER_TYPE}];` without required attributes "
            f"(every request's principal is an {PRINCIPAL_TYPE}, a member of its "
            f"{ISSUER_TYPE}): {exc}"
        ) from None


def compile_bundle(source: BundleSource) -> CompiledBundle:
    """Parse, check, validate and index `source`; raise BundleRejected with every reason.

    1. Every file parses, and holds no template.
    2. Every policy gets a stable id; ids are unique.
    3. The set is not empty.
    4. With a schema: the schema parses, admits the entities every request
       carries (an Agent that is a member of an Issuer), and every policy
       validates against it.
    5. The full policy set and the scope index are built.
    """
    # 1. Parse.
    policies: list[CompiledPolicy] = []
    for policy_file in sorted(source.policies, key=_by_name):
        for positional, est in _parse_file(policy_file):
            annotated = est.get("annotations", {}).get("id")
            # 2. Stable ids.
            policy_id = annotated if annotated else f"{policy_file.name}:{positional}"
            policies.append(
                CompiledPolicy(
                    policy_id,
                    est["effect"],
                    policy_file.name,
                    json.dumps(est, separators=(",", ":")),
                    policy_scope(est),
                )
            )
    ids = [p.id for p in policies]
    duplicates = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if duplicates:
        raise BundleRejected("policy ids must be unique; repeated: " + ", ".join(duplicates))
    # 3. Not empty.
    if not policies:
        raise BundleRejected("the bundle holds no policy: an empty policy set permits nothing")
    # 4. Schema validation, file by file so that errors name the file's policies.
    schema = _schema(source)
    if schema is not None:
        _check_request_entities(schema)
        problems = []
        for policy_file in sorted(source.policies, key=_by_name):
            result = cedarpy.validate_policies(policy_file.text, schema, release_gil=True)
            if not result.validation_passed:
                annotations = result.id_annotations_by_policy_id
                for error in result.errors:
                    name = annotations.get(error.policy_id) or (
                        f"{policy_file.name}:{error.policy_id}"
                    )
                    problems.append(f"{name}: {error.error}")
        if problems:
            raise BundleRejected("policies fail schema validation: " + "; ".join(problems))
    # 5. Full set and index.
    try:
        full_set = policy_set_of({p.id: p.est for p in policies})
    except ValueError as exc:  # Cedar refusing its own JSON form would be a bug; refuse anyway.
        raise BundleRejected(f"the policy set cannot be built: {exc}") from exc
    ancestors: Mapping[EntityUid, frozenset[EntityUid]] = (
        action_ancestors(schema) if schema is not None else {}
    )
    index = ScopeIndex(
        [(p.id, p.est, p.scope) for p in policies],
        action_ancestors=ancestors,
        build=policy_set_of,
        full_set=full_set,
    )
    return CompiledBundle(
        version=source.version,
        source=source,
        policies=tuple(policies),
        effects={p.id: p.effect for p in policies},
        full_set=full_set,
        schema=schema,
        index=index,
    )
