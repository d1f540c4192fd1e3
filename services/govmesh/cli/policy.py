"""`govmesh policy`: publish, inspect, activate, test and compare policy bundles.

    govmesh policy push PATH [--stage | --shadow]   sign, publish, activate (or stage, or shadow)
    govmesh policy list                             bundles and the activation history
    govmesh policy show VERSION [--source]          one bundle: files, policy ids, epochs
    govmesh policy activate VERSION [--shadow]      roll back (or forward), or observe as shadow
    govmesh policy activate --clear-shadow          stop observing the shadow bundle
    govmesh policy test REQUESTS [--bundle B]       evaluate requests locally, print decisions
    govmesh policy diff [--epoch N]                 requests where shadow and active disagreed
    govmesh policy diff --requests FILE [--against B]   the same, replayed locally

The authority is --target, else GOVMESH_POLICY_TARGET, else the one `govmesh
up` runs. Bundles and activations are signed with --key, else
GOVMESH_KEYS_DIR/policy-admin.jwk.json, else the development key of `govmesh
up`. VERSION is a bundle version or a unique prefix of it (at least 4 digits);
B is a .cedar file or folder on disk, or a VERSION.

A bundle that `test` and `diff` fetch from the authority is evaluated only if
its content hashes to the version asked for and a policy admin named by
--trust (else GOVMESH_TRUST_FILE, else the trust file of `govmesh up`) signed
that version: what is tested is what replicas would enforce.

Exit codes: 0 done; 1 refused by the authority, a `test` expectation not met,
or (like diff(1)) disagreements found; 2 unusable arguments or files.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf import json_format, struct_pb2
from joserfc.jwk import OKPKey

from govmesh.artifacts.keys import load_private_jwk
from govmesh.artifacts.signing import (
    Activation,
    AdminKeys,
    SignatureRejected,
    load_admin_keys,
    sign_activation,
    sign_bundle,
)
from govmesh.cli.paths import add_data_dir_argument, data_dir, dev_setup
from govmesh.client.admin import REFUSALS, EpochTaken, PolicyAdminClient
from govmesh.policy.bundle import (
    BundleRejected,
    CompiledBundle,
    compile_bundle,
    parse_bundle_content,
    read_bundle_source,
)
from govmesh.policy.core import PolicyDecision, PolicyRequest, evaluate
from govmesh.policy.transitions import (
    AlreadyInRole,
    NoShadow,
    NothingActive,
    NotItsVersion,
    activate,
    clear_shadow,
    observe,
    verify_stored_bundle,
)
from govmesh.runtime.errors import ConfigurationError, PreconditionFailed
from govmesh.v1 import common_pb2, policy_pb2

T = TypeVar("T")

ADMIN_KEY_FILE = "policy-admin.jwk.json"
#: How often push and activate re-sign for the next epoch when another change lands first.
EPOCH_ATTEMPTS = 3


class Refused(PreconditionFailed):
    """The change cannot be made, or the authority's answer cannot be used: the message says why."""


class AlreadyThere(PreconditionFailed):
    """The bundle pushed already holds the role asked for: nothing to activate."""


# --- where things are -----------------------------------------------------------------


def _target(args: argparse.Namespace) -> str:
    if args.target:
        return str(args.target)
    if os.environ.get("GOVMESH_POLICY_TARGET"):
        return os.environ["GOVMESH_POLICY_TARGET"]
    port_file = data_dir(args.data_dir) / "run" / "policy.addr"
    if port_file.is_file():
        return port_file.read_text().strip()
    raise ConfigurationError(
        "no policy authority: pass --target HOST:PORT, set GOVMESH_POLICY_TARGET, "
        "or run `govmesh up`"
    )


def _key(args: argparse.Namespace) -> OKPKey:
    if args.key:
        path = Path(args.key)
    elif os.environ.get("GOVMESH_KEYS_DIR"):
        path = Path(os.environ["GOVMESH_KEYS_DIR"]) / ADMIN_KEY_FILE
    else:
        path = dev_setup(data_dir(args.data_dir)).keys_dir / ADMIN_KEY_FILE
    return load_private_jwk(path)


# --- talking to the authority ---------------------------------------------------------


def _current(state: policy_pb2.PolicyState) -> Activation | None:
    """The newest epoch in the store, as the activation that made it (None before the first)."""
    current = state.current
    if not current.epoch:
        return None
    return Activation(current.epoch, current.active_version, current.shadow_version or None)


async def _next_epoch(
    admin: PolicyAdminClient,
    decide: Callable[[Activation | None], Activation],
    send: Callable[[str], Awaitable[T]],
    key: OKPKey,
) -> T:
    """Sign the activation `decide` makes of the current state, and send it.

    When another change takes the epoch first (EpochTaken), look again and
    re-sign: the statement must name the epoch it creates.
    """
    for attempt in range(EPOCH_ATTEMPTS):
        activation = decide(_current(await admin.state()))
        try:
            return await send(sign_activation(activation, key))
        except EpochTaken:
            if attempt == EPOCH_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _run(args: argparse.Namespace, work: Callable[[PolicyAdminClient], Awaitable[int]]) -> int:
    async def main() -> int:
        async with await PolicyAdminClient.connect(_target(args), timeout=args.timeout) as admin:
            return await work(admin)

    try:
        return asyncio.run(main())
    except Refused as exc:
        refused: Exception = exc
    except REFUSALS as exc:
        refused = exc
    print(f"govmesh policy: refused: {refused}", file=sys.stderr)
    return 1


def _short(version: str) -> str:
    return version[:12] if version else "-"


def _when(stamp: Any) -> str:
    if not stamp.seconds:
        return "-"
    return str(stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"))


def _print_json(document: object) -> None:
    print(json.dumps(document, indent=2, sort_keys=True))


# --- push -------------------------------------------------------------------------------


def _push(args: argparse.Namespace) -> int:
    try:
        source = read_bundle_source(Path(args.path))
    except BundleRejected as exc:
        raise ConfigurationError(str(exc)) from None
    key = _key(args)
    version = source.version
    bundle = policy_pb2.SignedBundle(
        content=source.canonical(), signature=sign_bundle(version, key)
    )

    def decide(current: Activation | None) -> Activation:
        try:
            return observe(current, version) if args.shadow else activate(current, version)
        except NothingActive:
            raise Refused("nothing is active yet: push without --shadow first") from None
        except AlreadyInRole:
            raise AlreadyThere(version) from None

    async def work(admin: PolicyAdminClient) -> int:
        if args.stage:
            response = await admin.publish(bundle, note=args.note)
        else:
            try:
                response = await _next_epoch(
                    admin,
                    decide,
                    lambda statement: admin.publish(
                        bundle, activation=statement, note=args.note or "push"
                    ),
                    key,
                )
            except AlreadyThere:
                role = "shadow" if args.shadow else "active"
                print(f"{version} is already {role}: nothing to do")
                return 0
        info = response.bundle
        verb = "published" if response.created else "already published"
        print(f"{verb} {info.version} ({info.policy_count} policies)")
        if response.HasField("epoch"):
            role = "shadow" if args.shadow else "active"
            print(f"{role} from epoch {response.epoch.epoch}")
        else:
            print("staged: activate with `govmesh policy activate " + _short(info.version) + "`")
        return 0

    return _run(args, work)


# --- list and show ------------------------------------------------------------------------


def _epoch_doc(epoch: policy_pb2.EpochInfo) -> dict[str, Any]:
    return {
        "epoch": epoch.epoch,
        "active": epoch.active_version,
        "shadow": epoch.shadow_version or None,
        "signer": epoch.signer_kid,
        "note": epoch.note,
        "created_at": _when(epoch.created_at),
    }


def _bundle_doc(info: policy_pb2.BundleInfo, state: policy_pb2.PolicyState) -> dict[str, Any]:
    status = "staged"
    if info.version == state.current.active_version:
        status = "active"
    elif info.version == state.current.shadow_version:
        status = "shadow"
    return {
        "version": info.version,
        "status": status,
        "policies": info.policy_count,
        "schema": info.has_schema,
        "metadata": dict(info.metadata),
        "signer": info.signer_kid,
        "published_at": _when(info.published_at),
    }


def _list(args: argparse.Namespace) -> int:
    async def work(admin: PolicyAdminClient) -> int:
        state = await admin.state()
        listing = await admin.list_bundles(limit=args.limit)
        bundles = [_bundle_doc(b, state) for b in listing.bundles]
        history = [_epoch_doc(e) for e in listing.history]
        if args.json:
            _print_json({"bundles": bundles, "history": history})
            return 0
        print(f"{'VERSION':<14}{'STATUS':<8}{'POLICIES':>9}  {'SCHEMA':<7}PUBLISHED")
        for b in bundles:
            print(
                f"{_short(b['version']):<14}{b['status']:<8}{b['policies']:>9}  "
                f"{'yes' if b['schema'] else 'no':<7}{b['published_at']}"
            )
        print()
        print(f"{'EPOCH':>6}  {'ACTIVE':<14}{'SHADOW':<14}{'WHEN':<21}NOTE")
        for e in history:
            print(
                f"{e['epoch']:>6}  {_short(e['active']):<14}{_short(e['shadow'] or ''):<14}"
                f"{e['created_at']:<21}{e['note']}"
            )
        return 0

    return _run(args, work)


def _show(args: argparse.Namespace) -> int:
    async def work(admin: PolicyAdminClient) -> int:
        state = await admin.state()
        response = await admin.bundle(args.version)
        doc = _bundle_doc(response.info, state)
        doc["files"] = list(response.info.files)
        doc["policy_ids"] = list(response.info.policy_ids)
        doc["epochs"] = [_epoch_doc(e) for e in response.epochs]
        source = parse_bundle_content(response.bundle.content)
        if args.json:
            if args.source:
                doc["source"] = source.document()
            _print_json(doc)
            return 0
        print(f"version    {doc['version']}")
        print(f"status     {doc['status']}")
        print(f"signed by  {doc['signer']} at {doc['published_at']}")
        print(f"schema     {'yes' if doc['schema'] else 'no'}")
        for name, value in sorted(doc["metadata"].items()):
            print(f"{name:<10} {value}")
        print(f"files      {', '.join(doc['files'])}")
        print(f"policies   {len(doc['policy_ids'])}: {', '.join(doc['policy_ids'])}")
        for epoch in doc["epochs"]:
            role = "active" if epoch["active"] == doc["version"] else "shadow"
            print(f"epoch {epoch['epoch']:>4}  {role} since {epoch['created_at']}  {epoch['note']}")
        if args.source:
            for policy in source.policies:
                print(f"\n// ---- {policy.name}\n{policy.text}")
            if source.schema is not None:
                print(f"\n// ---- schema ({source.schema.format})\n{source.schema.text}")
        return 0

    return _run(args, work)


# --- activate -----------------------------------------------------------------------------


def _activate(args: argparse.Namespace) -> int:
    if bool(args.version) == bool(args.clear_shadow):
        raise ConfigurationError("give a VERSION to activate, or --clear-shadow")
    if args.clear_shadow and args.shadow:
        raise ConfigurationError("--shadow and --clear-shadow exclude each other")
    key = _key(args)

    async def work(admin: PolicyAdminClient) -> int:
        version = (await admin.bundle(args.version)).info.version if args.version else ""

        def decide(current: Activation | None) -> Activation:
            try:
                if args.clear_shadow:
                    return clear_shadow(current)
                if args.shadow:
                    return observe(current, version)
                return activate(current, version)
            except NoShadow:
                raise Refused("there is no shadow bundle") from None
            except NothingActive:
                raise Refused("nothing is active yet: activate a bundle first") from None
            except AlreadyInRole as exc:
                if args.shadow:
                    raise Refused(f"{version} is already the {exc.role} bundle") from None
                assert current is not None
                raise Refused(f"{version} is already active (epoch {current.epoch})") from None

        response = await _next_epoch(
            admin,
            decide,
            lambda statement: admin.activate(statement, note=args.note or "activate"),
            key,
        )
        epoch = response.epoch
        print(f"epoch {epoch.epoch}: active {epoch.active_version}")
        if epoch.shadow_version:
            print(f"          shadow {epoch.shadow_version}")
        return 0

    return _run(args, work)


# --- local evaluation: test and diff --requests ---------------------------------------------


@dataclass(frozen=True)
class _Case:
    name: str
    request: PolicyRequest
    expect: str | None


def _as_the_engine_sends(context: dict[str, Any]) -> dict[str, Any]:
    # Through a protobuf Struct, exactly as the engine sends it: numbers become doubles.
    message = struct_pb2.Struct()
    try:
        json_format.ParseDict(context, message)
        return json_format.MessageToDict(message)
    except (json_format.ParseError, ValueError, TypeError, AttributeError) as exc:
        raise ConfigurationError(f"a request context is not a JSON object: {exc}") from None


def _read_cases(path: Path) -> list[_Case]:
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigurationError(f"{path} is not JSON: {exc}") from None
    items = document if isinstance(document, list) else [document]
    cases = []
    for n, item in enumerate(items, 1):
        if not isinstance(item, dict) or not all(
            isinstance(item.get(k), str) for k in ("principal", "issuer", "action", "resource")
        ):
            raise ConfigurationError(
                f"{path}: request {n} needs principal, issuer, action and resource strings"
            )
        expect = item.get("expect")
        if expect is not None and expect not in ("ALLOW", "DENY"):
            raise ConfigurationError(f"{path}: request {n}: expect is ALLOW or DENY")
        given = item.get("context") or {}
        if not isinstance(given, dict):
            raise ConfigurationError(f"{path}: request {n}: context must be a JSON object")
        context = {"request": {}, "env": {}, "attribution": {}, **given}
        cases.append(
            _Case(
                name=str(item.get("name") or f"request {n}"),
                request=PolicyRequest(
                    principal=item["principal"],
                    issuer=item["issuer"],
                    action=item["action"],
                    resource=item["resource"],
                    context=_as_the_engine_sends(context),
                ),
                expect=expect,
            )
        )
    return cases


def _compile_path(spec: str) -> CompiledBundle:
    try:
        return compile_bundle(read_bundle_source(Path(spec)))
    except BundleRejected as exc:
        raise ConfigurationError(f"{spec}: {exc}") from None


def _admin_keys(args: argparse.Namespace) -> AdminKeys:
    if args.trust:
        path = Path(args.trust)
    elif os.environ.get("GOVMESH_TRUST_FILE"):
        path = Path(os.environ["GOVMESH_TRUST_FILE"])
    else:
        path = dev_setup(data_dir(args.data_dir)).trust_file
    return load_admin_keys(path)


async def _fetch(
    admin: PolicyAdminClient, version: str | None, *, shadow: bool, keys: Callable[[], AdminKeys]
) -> CompiledBundle:
    """A bundle from the authority: by version, or the active (or shadow) one.

    Checked as a replica checks it before compiling it (verify_stored_bundle):
    1. The content is a canonical bundle whose version (its hash) is the one
       the authority names, and that starts with the version asked for.
    2. A policy admin the trust file names signed exactly that version.
    """
    if not version:
        state = await admin.state()
        version = state.current.shadow_version if shadow else state.current.active_version
        if not version:
            raise Refused("no shadow bundle is set" if shadow else "no bundle is active")
    response = await admin.bundle(version)
    wanted = version.strip().lower()
    named = response.info.version
    try:
        source = verify_stored_bundle(
            response.bundle.content, response.bundle.signature, named, keys()
        )
        # Hashes to the version named, which is the one asked for.
        if not named.startswith(wanted):
            raise NotItsVersion(named, source.version)
    except NotItsVersion as exc:
        raise Refused(
            f"the content the authority sent for {named or version} does not "
            f"hash to {wanted} (it hashes to {exc.actual}): refusing to evaluate it"
        ) from None
    except BundleRejected as exc:
        raise Refused(f"bundle {version} is not a bundle: {exc}") from None
    except SignatureRejected as exc:
        raise Refused(f"bundle {named} is refused: {exc}") from None
    try:
        return compile_bundle(source)
    except BundleRejected as exc:
        raise Refused(f"bundle {source.version} does not compile here: {exc}") from None


def _decision_doc(decision: PolicyDecision) -> dict[str, Any]:
    return {
        "decision": "ALLOW" if decision.allowed else "DENY",
        "determining": list(decision.determining),
        "errors": list(decision.errors),
    }


def _local(args: argparse.Namespace, specs: Sequence[str | None], work: Callable[..., int]) -> int:
    """Run `work(bundles...)`: bundles on disk compile here, the others come from the authority.

    A missing spec means the active bundle, or for the second of two, the shadow.
    """
    local = [_compile_path(spec) if spec and Path(spec).exists() else None for spec in specs]
    if all(bundle is not None for bundle in local):
        return work(*local)

    trusted: list[AdminKeys] = []

    def keys() -> AdminKeys:
        if not trusted:
            trusted.append(_admin_keys(args))
        return trusted[0]

    async def remote(admin: PolicyAdminClient) -> int:
        bundles = [
            bundle
            if bundle is not None
            else await _fetch(admin, spec, shadow=(n == 1 and spec is None), keys=keys)
            for n, (bundle, spec) in enumerate(zip(local, specs, strict=True))
        ]
        return work(*bundles)

    return _run(args, remote)


def _test(args: argparse.Namespace) -> int:
    cases = _read_cases(Path(args.requests))

    def work(bundle: CompiledBundle) -> int:
        results = []
        failed = 0
        for case in cases:
            decision = evaluate(bundle, case.request)
            doc = {"name": case.name, **_decision_doc(decision)}
            if case.expect is not None:
                doc["expect"] = case.expect
                doc["ok"] = doc["decision"] == case.expect
                failed += not doc["ok"]
            results.append(doc)
        if args.json:
            _print_json({"bundle": bundle.version, "results": results, "failed": failed})
        else:
            print(f"bundle {bundle.version}")
            for case, doc in zip(cases, results, strict=True):
                mark = "" if "ok" not in doc else ("  ok" if doc["ok"] else "  UNEXPECTED")
                r = case.request
                print(f"{doc['decision']:<6}{doc['name']}: {r.action} on {r.resource}{mark}")
                if doc["determining"]:
                    print(f"      determined by {', '.join(doc['determining'])}")
                for error in doc["errors"]:
                    print(f"      error: {error}")
            if failed:
                print(f"{failed} of {len(cases)} requests did not get the expected decision")
        return 1 if failed else 0

    return _local(args, [args.bundle], work)


# --- diff -----------------------------------------------------------------------------------


def _diff_replay(args: argparse.Namespace) -> int:
    cases = _read_cases(Path(args.requests))

    def work(base: CompiledBundle, other: CompiledBundle) -> int:
        disagreements = []
        for case in cases:
            a, b = evaluate(base, case.request), evaluate(other, case.request)
            if a.allowed != b.allowed:
                disagreements.append(
                    {"name": case.name, "active": _decision_doc(a), "shadow": _decision_doc(b)}
                )
        doc = {
            "active_version": base.version,
            "shadow_version": other.version,
            "evaluated": len(cases),
            "disagreed": len(disagreements),
            "disagreements": disagreements,
        }
        _render_diff(args, doc)
        return 1 if disagreements else 0

    return _local(args, [args.base, args.against], work)


def _render_diff(args: argparse.Namespace, doc: dict[str, Any]) -> None:
    if args.json:
        _print_json(doc)
        return
    print(f"active {doc['active_version']}")
    print(f"shadow {doc['shadow_version']}")
    dropped = f" ({doc['dropped']} not kept)" if doc.get("dropped") else ""
    print(f"{doc['disagreed']} of {doc['evaluated']} requests disagree{dropped}")
    for item in doc["disagreements"]:
        active, shadow = item["active"], item["shadow"]
        where = item.get("request") or item["name"]
        print(f"\n{where}")
        for label, side in (("active", active), ("shadow", shadow)):
            detail = ", ".join(side["determining"]) or "; ".join(side["errors"]) or "no policy"
            print(f"  {label:<7}{side['decision']:<6}{detail}")


def _diff(args: argparse.Namespace) -> int:
    if args.requests:
        return _diff_replay(args)

    async def work(admin: PolicyAdminClient) -> int:
        report = await admin.shadow_report(epoch=args.epoch, limit=args.limit)
        doc = {
            "active_version": report.active_version,
            "shadow_version": report.shadow_version,
            "epochs": list(report.epochs),
            "evaluated": report.evaluated,
            "disagreed": report.disagreed,
            "dropped": report.dropped,
            "disagreements": [
                {
                    "epoch": d.epoch,
                    "recorded_at": _when(d.recorded_at),
                    "decision_id": d.decision_id,
                    "request_digest": d.request_digest,
                    "request": f"{d.principal} ({d.issuer or 'issuer not recorded'}) "
                    f"{d.action} on {d.resource} (decision {d.decision_id or '-'})",
                    "issuer": d.issuer,
                    "context": json_format.MessageToDict(d.context),
                    "active": {
                        "decision": common_pb2.Decision.Name(d.active_decision),
                        "determining": list(d.active_determining),
                        "errors": list(d.active_errors),
                    },
                    "shadow": {
                        "decision": common_pb2.Decision.Name(d.shadow_decision),
                        "determining": list(d.shadow_determining),
                        "errors": list(d.shadow_errors),
                    },
                }
                for d in report.disagreements
            ],
        }
        _render_diff(args, doc)
        return 1 if report.disagreed else 0

    return _run(args, work)


# --- the command tree -----------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser, *, signs: bool = False, checks: bool = False) -> None:
    add_data_dir_argument(parser)
    parser.add_argument("--target", help="the policy authority, HOST:PORT (GOVMESH_POLICY_TARGET)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    if checks:
        parser.add_argument(
            "--trust",
            help="trust TOML naming the policy-admin keys whose signatures a bundle fetched "
            "from the authority must carry (default GOVMESH_TRUST_FILE, else the one of "
            "`govmesh up`)",
        )
    if signs:
        parser.add_argument(
            "--key", help=f"policy-admin private JWK (default GOVMESH_KEYS_DIR/{ADMIN_KEY_FILE})"
        )
        parser.add_argument("--note", default="", help="recorded in the activation history")


def register(commands: Any) -> None:
    policy = commands.add_parser("policy", help="policy bundles: push, list, activate, test, diff")
    sub = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")

    push = sub.add_parser("push", help="sign, publish and activate a .cedar file or folder")
    push.add_argument("path", help="a .cedar file, or a folder of .cedar files (+ schema)")
    mode = push.add_mutually_exclusive_group()
    mode.add_argument("--stage", action="store_true", help="publish without activating")
    mode.add_argument("--shadow", action="store_true", help="evaluate beside the active bundle")
    _common(push, signs=True)
    push.set_defaults(func=_push)

    listing = sub.add_parser("list", help="published bundles and the activation history")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true")
    _common(listing)
    listing.set_defaults(func=_list)

    show = sub.add_parser("show", help="one bundle: files, policy ids, epochs")
    show.add_argument("version", help="a version or a unique prefix")
    show.add_argument("--source", action="store_true", help="print the policies")
    show.add_argument("--json", action="store_true")
    _common(show)
    show.set_defaults(func=_show)

    activate = sub.add_parser("activate", help="activate a published bundle (roll back/forward)")
    activate.add_argument("version", nargs="?", help="a version or a unique prefix")
    activate.add_argument("--shadow", action="store_true", help="observe it as the shadow bundle")
    activate.add_argument("--clear-shadow", action="store_true", help="stop the shadow bundle")
    _common(activate, signs=True)
    activate.set_defaults(func=_activate)

    test = sub.add_parser(
        "test", help="evaluate a request file locally; print decisions and determining policies"
    )
    test.add_argument(
        "requests",
        help='JSON: a request or a list of {"principal", "issuer", "action", "resource", '
        '"context", "expect": "ALLOW"|"DENY", "name"}',
    )
    test.add_argument("--bundle", help="a .cedar file/folder or a VERSION (default: the active)")
    test.add_argument("--json", action="store_true")
    _common(test, checks=True)
    test.set_defaults(func=_test)

    diff = sub.add_parser("diff", help="requests on which the shadow and active bundles disagree")
    diff.add_argument("--epoch", type=int, default=0, help="report on this epoch's pair")
    diff.add_argument("--limit", type=int, default=50, help="disagreements to list")
    diff.add_argument("--requests", help="replay this request file locally instead")
    diff.add_argument("--base", help="with --requests: the bundle to compare (default: active)")
    diff.add_argument("--against", help="with --requests: the other bundle (default: shadow)")
    diff.add_argument("--json", action="store_true")
    _common(diff, checks=True)
    diff.set_defaults(func=_diff)
