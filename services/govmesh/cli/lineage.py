"""`govmesh lineage ...` (audit, proofs, queries, tail) and `govmesh witness ...`.

    govmesh lineage verify [--database-url URL | --target ADDR] [--vkey VKEY] [--witness VKEY]
                           [--anchor FILE] [--require-witness NAME [--max-unwitnessed N]]
    govmesh lineage proof DECISION_ID [-o FILE]      an offline proof bundle
    govmesh lineage check-proof FILE [--vkey VKEY]   verify a bundle, no database, no network
    govmesh lineage query --subject S | --trace-id T | --decision-id D | --since/--until TIME
    govmesh lineage tail [--from N | --from-end] [--count N]
    govmesh lineage checkpoint [--witnessed]
    govmesh lineage vkey [--keys-dir DIR] [--origin O]
    govmesh witness keygen FILE --name NAME
    govmesh witness run --key FILE --log-vkey VKEY --state FILE [--lineage ADDR] [--once]

The log's verifier key comes from --vkey, else GOVMESH_LINEAGE_VKEY, else
lineage.vkey beside GOVMESH_TRUST_FILE, else the one `govmesh up` created.

A log restored from an old backup is a valid prefix of the real one, so
`verify` alone cannot tell it was rolled back. `--anchor FILE` (repeatable)
names a checkpoint seen before: the output of `govmesh lineage checkpoint`,
a proof bundle, a witness's state file or the JSON `govmesh authorize`
prints. It must be signed by the log key for the audited origin (else exit
2); the log must hold at least that many entries, and their root must be
the anchor's (else an `anchor` finding: rolled back, or forked).
`--require-witness NAME` (repeatable) needs that witness's key among
--witness and at least one checkpoint it validly cosigned; with
`--max-unwitnessed N`, at most N entries may lie beyond the largest one.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from govmesh.artifacts.keys import generate_ed25519, load_private_jwk, write_private_jwk
from govmesh.cli.paths import data_dir, dev_setup
from govmesh.lineage.auditor import (
    Anchor,
    AuditReport,
    AuditSetupError,
    Finding,
    LogSource,
    audit,
    check_required_witnesses,
    read_anchor,
)
from govmesh.lineage.bundle import BundleError, ProofBundle, check_bundle
from govmesh.lineage.client import LineageClient, LineageError
from govmesh.lineage.keys import (
    DEFAULT_ORIGIN,
    KEY_FILE,
    VKEY_FILE,
    log_vkey,
    parse_vkeys,
)
from govmesh.lineage.notes import COSIGNATURE_V1, ED25519, Cosigner, VerifierKey
from govmesh.lineage.sources import DatabaseSource, ServiceSource
from govmesh.lineage.witness import Witness, WitnessRefusal
from govmesh.runtime.errors import ConfigurationError
from govmesh.runtime.logs import configure_logging

logger = logging.getLogger("govmesh.witness")

DEFAULT_TARGET = "127.0.0.1:50054"


# --- where things are ----------------------------------------------------------


def _target(args: argparse.Namespace) -> str:
    """--target, else GOVMESH_LINEAGE_TARGET, else the lineage `govmesh up` runs."""
    if args.target:
        return str(args.target)
    if os.environ.get("GOVMESH_LINEAGE_TARGET"):
        return os.environ["GOVMESH_LINEAGE_TARGET"]
    port_file = data_dir(args.data_dir) / "run" / "lineage.addr"
    if port_file.is_file():
        return port_file.read_text().strip()
    return DEFAULT_TARGET


def _log_key(args: argparse.Namespace) -> VerifierKey:
    spec = args.vkey or os.environ.get("GOVMESH_LINEAGE_VKEY")
    if not spec:
        candidates = []
        if os.environ.get("GOVMESH_TRUST_FILE"):
            candidates.append(Path(os.environ["GOVMESH_TRUST_FILE"]).parent / VKEY_FILE)
        candidates.append(dev_setup(data_dir(args.data_dir)).lineage_vkey)
        spec = next((str(c) for c in candidates if c.is_file()), None)
    if not spec:
        raise ConfigurationError(
            "name the log's verifier key with --vkey (a vkey, or a file such as the "
            f"{VKEY_FILE} that `govmesh keys init` writes) or GOVMESH_LINEAGE_VKEY"
        )
    keys = parse_vkeys(spec, sig_type=ED25519)
    if len(keys) != 1:
        raise ConfigurationError("give exactly one log verifier key")
    return keys[0]


def _witness_keys(args: argparse.Namespace) -> list[VerifierKey]:
    specs = list(args.witness or [])
    if not specs and os.environ.get("GOVMESH_LINEAGE_WITNESSES"):
        specs = [os.environ["GOVMESH_LINEAGE_WITNESSES"]]
    return [k for spec in specs for k in parse_vkeys(spec, sig_type=COSIGNATURE_V1)]


async def _with_client(
    args: argparse.Namespace, work: Callable[[LineageClient], Awaitable[int]]
) -> int:
    try:
        client = await LineageClient.connect(_target(args), timeout=args.timeout)
    except LineageError as exc:
        print(f"govmesh: {exc}", file=sys.stderr)
        return 1
    async with client:
        try:
            return await work(client)
        except LineageError as exc:
            print(f"govmesh: {exc}", file=sys.stderr)
            return 1


def _entry_json(index: int, decision_id: str, entry: bytes, logged_at: Any = None) -> str:
    doc: dict[str, Any] = {"index": index, "decision_id": decision_id}
    if logged_at is not None and logged_at.seconds:
        doc["logged_at"] = logged_at.ToDatetime(tzinfo=UTC).isoformat()
    try:
        doc["entry"] = json.loads(entry)
    except ValueError:
        doc["entry_base64"] = base64.b64encode(entry).decode()
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


# --- verify ------------------------------------------------------------------------


def _anchors(paths: list[str], log_key: VerifierKey, origin: str) -> list[Anchor]:
    anchors = []
    for path in paths:
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigurationError(f"cannot read anchor {path}: {reason}") from None
        try:
            anchors.append(read_anchor(text, label=path, log_key=log_key, origin=origin))
        except AuditSetupError as exc:
            raise ConfigurationError(str(exc)) from None
    return anchors


def _verify(args: argparse.Namespace) -> int:
    log_key = _log_key(args)
    witnesses = _witness_keys(args)
    origin = args.origin or log_key.name
    url = args.database_url or (None if args.target else os.environ.get("GOVMESH_DATABASE_URL"))
    # Everything the audit is asked to hold the log to is checked before it reads the log.
    anchors = _anchors(args.anchor or [], log_key, origin)
    required = list(args.require_witness or [])
    try:
        check_required_witnesses(required, witnesses, args.max_unwitnessed)
    except AuditSetupError as exc:
        raise ConfigurationError(str(exc)) from None

    async def checked(source: LogSource) -> AuditReport:
        return await audit(
            source,
            log_key=log_key,
            origin=origin,
            witnesses=witnesses,
            anchors=anchors,
            require_witnesses=required,
            max_unwitnessed=args.max_unwitnessed,
        )

    async def run() -> int:
        if url:
            try:
                database = await DatabaseSource.connect(url)
            except (OSError, Exception) as exc:
                raise ConfigurationError(f"cannot reach the database: {exc}") from None
            try:
                report = await checked(database)
            finally:
                await database.close()
            return _print_report(report, args.json)

        async def over_service(client: LineageClient) -> int:
            source: LogSource = ServiceSource(client, f"lineage service at {_target(args)}")
            return _print_report(await checked(source), args.json)

        return await _with_client(args, over_service)

    return asyncio.run(run())


def _print_report(report: AuditReport, as_json: bool) -> int:
    first = report.first_difference()
    if as_json:
        doc = {
            "ok": report.ok,
            "source": report.source,
            "entries": report.entries,
            "checkpoints": report.checkpoints,
            "tree_size": report.tree_size,
            "root_hash": base64.b64encode(report.root).decode(),
            "consistency_proofs_checked": report.proofs_checked,
            "engines": report.engines,
            "refused": [
                {
                    "index": refused.index,
                    "decision_id": refused.decision_id,
                    "entry_sha256": refused.entry_sha256,
                    "reason": refused.reason,
                }
                for refused in report.refused
            ],
            "witnesses": [
                {
                    "name": w.name,
                    "vkey": w.vkey,
                    "cosigned": len(w.cosigned),
                    "largest_witnessed_size": w.largest,
                }
                for w in report.witnesses
            ],
            "unknown_cosignatures": report.unknown_cosignatures,
            "anchors": [
                {
                    "file": a.anchor.label,
                    "tree_size": a.anchor.size,
                    "root_hash": base64.b64encode(a.anchor.root).decode(),
                    "status": a.status,
                }
                for a in report.anchors
            ],
            "required_witnesses": [
                {
                    "name": w.name,
                    "largest_witnessed_size": w.largest,
                    "unwitnessed_entries": w.unwitnessed,
                }
                for w in report.required_witnesses
            ],
            "max_unwitnessed": report.max_unwitnessed,
            "first_difference": None if first is None else _finding(first),
            "findings": [_finding(f) for f in report.findings],
            "suppressed": report.suppressed,
        }
        print(json.dumps(doc, indent=2))
        return 0 if report.ok else 1
    print(
        f"lineage audit of the {report.source}: {report.entries} entries, "
        f"{report.checkpoints} checkpoints"
    )
    if report.tree_size:
        root = base64.b64encode(report.root).decode()
        print(f"  newest verified checkpoint: size {report.tree_size}, root {root}")
    if report.proofs_checked:
        print(f"  consistency proofs verified between checkpoints: {report.proofs_checked}")
    for engine, count in report.engines.items():
        print(f"  engine {engine}: {count} decisions, counter contiguous from 0")
    if report.refused:
        print(f"  entries lineage refused, recorded by hash in their place: {len(report.refused)}")
    for refused in report.refused[:20]:
        print(
            f"    entry {refused.index} ({refused.decision_id}): "
            f"sha256 {refused.entry_sha256}: {refused.reason}"
        )
    for w in report.witnesses:
        if w.cosigned:
            print(
                f"  witness {w.name}: cosigned {len(w.cosigned)} checkpoints, "
                f"newest witnessed size {w.largest}"
            )
        else:
            print(f"  witness {w.name}: cosigned no checkpoint")
    if report.unknown_cosignatures:
        print(f"  cosignatures from keys not given: {report.unknown_cosignatures} (not checked)")
    for a in report.anchors:
        root = base64.b64encode(a.anchor.root).decode()
        print(f"  anchor {a.anchor.label}: size {a.anchor.size}, root {root}: {a.status}")
    for r in report.required_witnesses:
        if r.largest is None:
            print(f"  required witness {r.name}: cosigned no checkpoint")
            continue
        bound = "" if report.max_unwitnessed is None else f" (at most {report.max_unwitnessed})"
        print(
            f"  required witness {r.name}: largest cosigned size {r.largest}, "
            f"{r.unwitnessed} entries beyond it{bound}"
        )
    if report.ok:
        print("OK: every entry, checkpoint and cosignature checks out")
        return 0
    print(f"FAILED: {len(report.findings) + sum(report.suppressed.values())} findings")
    if first is not None:
        print(f"  first difference: {_describe(first)}")
    for finding in report.findings:
        print(f"  - [{finding.kind}] {finding.message}")
    for kind, count in report.suppressed.items():
        print(f"  - [{kind}] ... and {count} more")
    return 1


def _describe(finding: Finding) -> str:
    if finding.first is None:
        return finding.message
    where = (
        f"entry {finding.first}"
        if finding.first == finding.last
        else f"an entry among {finding.first}..{finding.last}"
    )
    if finding.decision_id:
        where += f" (decision {finding.decision_id})"
    return f"{where}: {finding.message}"


def _finding(finding: Finding) -> dict[str, Any]:
    return {
        "kind": finding.kind,
        "message": finding.message,
        "first": finding.first,
        "last": finding.last,
        "tree_size": finding.tree_size,
        "decision_id": finding.decision_id,
    }


# --- proofs ----------------------------------------------------------------------


def _proof(args: argparse.Namespace) -> int:
    bundles: list[ProofBundle] = []

    async def work(client: LineageClient) -> int:
        answer = await client.inclusion_proof(
            args.decision_id, tree_size=args.tree_size, witnessed=not args.newest
        )
        if not answer.checkpoint:
            print(
                f"govmesh: the log signed no checkpoint of size {answer.tree_size}", file=sys.stderr
            )
            return 1
        bundles.append(
            ProofBundle(
                decision_id=answer.decision_id,
                index=answer.index,
                tree_size=answer.tree_size,
                entry=answer.entry,
                inclusion_proof=tuple(answer.hashes),
                checkpoint=answer.checkpoint,
            )
        )
        return 0

    code = asyncio.run(_with_client(args, work))
    if code or not bundles:
        return code or 1
    [bundle] = bundles
    if args.output:
        Path(args.output).write_text(bundle.to_json())
        print(
            f"wrote {args.output}: entry {bundle.index} in the signed tree of "
            f"{bundle.tree_size} entries",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(bundle.to_json())
    return 0


def _check_proof(args: argparse.Namespace) -> int:
    log_key = _log_key(args)
    witnesses = _witness_keys(args)
    try:
        text = Path(args.file).read_text()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {args.file}: {exc.strerror}") from None
    try:
        result = check_bundle(
            ProofBundle.from_json(text),
            log_key=log_key,
            origin=args.origin or log_key.name,
            witnesses=witnesses,
        )
    except BundleError as exc:
        print(f"INVALID: {exc}")
        return 1
    decision = result.decision
    print(
        f"OK: decision {decision.get('decision_id')} ({decision.get('decision')}"
        f"{', ' + str(decision['reason']) if decision.get('reason') else ''}) is entry "
        f"{result.index} of the log tree of {result.tree_size} entries signed by {log_key.name}"
    )
    if result.witnessed_by:
        print(f"  witnessed by: {', '.join(result.witnessed_by)}")
    elif witnesses:
        print("  not witnessed by any given witness")
    print(json.dumps(decision, indent=2, ensure_ascii=False))
    return 0


# --- reading ------------------------------------------------------------------------


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigurationError(f"not an ISO 8601 time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _query(args: argparse.Namespace) -> int:
    since, until = _time(args.since), _time(args.until)

    async def work(client: LineageClient) -> int:
        printed = 0
        after: int | None = None
        while printed < args.limit:
            page = await client.query(
                decision_id=args.decision_id or "",
                trace_id=args.trace_id or "",
                subject=args.subject or "",
                since=since,
                until=until,
                after_index=after,
                limit=min(1000, args.limit - printed),
            )
            for e in page.entries:
                print(_entry_json(e.index, e.decision_id, e.entry, e.logged_at))
            printed += len(page.entries)
            if not page.more or not page.entries:
                break
            after = page.entries[-1].index
        return 0

    return asyncio.run(_with_client(args, work))


def _tail(args: argparse.Namespace) -> int:
    async def work(client: LineageClient) -> int:
        seen = 0
        next_index, from_end = args.start, args.from_end
        while True:
            try:
                async for e in client.tail(next_index, from_end=from_end):
                    print(_entry_json(e.index, e.decision_id, e.entry, e.logged_at), flush=True)
                    next_index, from_end = e.index + 1, False
                    seen += 1
                    if args.count and seen >= args.count:
                        return 0
            except LineageError as exc:
                # Servers age connections out and restart: follow on from where we were.
                if exc.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    raise
            await asyncio.sleep(0.5)

    try:
        return asyncio.run(_with_client(args, work))
    except KeyboardInterrupt:
        return 0


def _checkpoint(args: argparse.Namespace) -> int:
    async def work(client: LineageClient) -> int:
        answer = await client.checkpoint(witnessed=args.witnessed)
        sys.stdout.write(answer.checkpoint)
        return 0

    return asyncio.run(_with_client(args, work))


def _vkey(args: argparse.Namespace) -> int:
    keys_dir = args.keys_dir or os.environ.get("GOVMESH_KEYS_DIR")
    if not keys_dir:
        raise ConfigurationError("pass --keys-dir or set GOVMESH_KEYS_DIR")
    origin = args.origin or os.environ.get("GOVMESH_LINEAGE_ORIGIN") or DEFAULT_ORIGIN
    print(log_vkey(load_private_jwk(Path(keys_dir) / KEY_FILE), origin))
    return 0


# --- witness ------------------------------------------------------------------------


def _witness_cosigner(path: Path, name: str | None) -> Cosigner:
    key = load_private_jwk(path)
    chosen = name or key.as_dict(private=False).get("kid")
    if not isinstance(chosen, str) or not chosen:
        raise ConfigurationError("name the witness with --name")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = key.private_key
    assert isinstance(private, Ed25519PrivateKey)
    return Cosigner(chosen, private)


def _witness_keygen(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if path.exists():
        raise ConfigurationError(f"{path} exists; not overwriting a witness key")
    key = generate_ed25519(kid=args.name)
    cosigner = Cosigner(args.name, key.private_key)  # type: ignore[arg-type]
    write_private_jwk(path, key)
    print(cosigner.verifier.encode())
    return 0


def _witness_run(args: argparse.Namespace) -> int:
    configure_logging(service="witness", level=args.log_level, fmt="text")
    log_keys = parse_vkeys(args.log_vkey, sig_type=ED25519)
    if len(log_keys) != 1:
        raise ConfigurationError("give exactly one log verifier key with --log-vkey")
    cosigner = _witness_cosigner(Path(args.key), args.name)
    witness = Witness(
        cosigner=cosigner,
        log_key=log_keys[0],
        origin=args.origin or log_keys[0].name,
        state_path=Path(args.state),
    )

    async def work(client: LineageClient) -> int:
        while True:
            try:
                cosigned = await witness.step(client)
                if cosigned is not None:
                    print(f"cosigned checkpoint of size {cosigned.size}", flush=True)
            except WitnessRefusal as exc:
                logger.error("refusing to cosign: %s", exc)
                if args.once:
                    return 1
            except LineageError as exc:
                logger.warning("lineage unreachable: %s", exc)
                if args.once:
                    return 1
            if args.once:
                return 0
            await asyncio.sleep(args.interval)

    try:
        return asyncio.run(_with_client(args, work))
    except KeyboardInterrupt:
        return 0


# --- the command tree ----------------------------------------------------------------


def _client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", help="lineage host:port (GOVMESH_LINEAGE_TARGET)")
    parser.add_argument("--data-dir", help="data directory of `govmesh up` (GOVMESH_DATA_DIR)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call")


def _key_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vkey", help="the log's verifier key, or a file holding it")
    parser.add_argument("--origin", help="expected checkpoint origin (default: the key's name)")
    parser.add_argument(
        "--witness",
        action="append",
        help="a witness verifier key or file of them (repeatable; GOVMESH_LINEAGE_WITNESSES)",
    )


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "lineage", help="audit the decision log, export and check proofs, query it"
    )
    sub = parser.add_subparsers(dest="lineage_command", required=True, metavar="COMMAND")

    verify = sub.add_parser(
        "verify",
        help="recompute the whole log; exit 0 only when everything checks out",
        description="Audit the lineage log: every entry, hash, checkpoint signature, the "
        "consistency chain, engine counters and witness cosignatures. Reads the database "
        "directly with --database-url (or GOVMESH_DATABASE_URL), else the lineage service. "
        "A log rolled back to an old backup is a valid prefix of the real one: only an "
        "--anchor (a checkpoint seen before) shows that it lost entries.",
    )
    verify.add_argument("--database-url", help="audit this database directly")
    _client_arguments(verify)
    _key_arguments(verify)
    verify.add_argument(
        "--anchor",
        action="append",
        metavar="FILE",
        help="a checkpoint seen before (repeatable): the output of `govmesh lineage "
        "checkpoint`, a proof bundle, a witness state file or `govmesh authorize` JSON. "
        "It must be signed by the log key (else exit 2); the log must hold at least its "
        "size in entries, and their root must be its root (else: rolled back, or forked)",
    )
    verify.add_argument(
        "--require-witness",
        action="append",
        metavar="NAME",
        help="a witness (its key among --witness) that must have validly cosigned at "
        "least one checkpoint of the log (repeatable)",
    )
    verify.add_argument(
        "--max-unwitnessed",
        type=int,
        metavar="N",
        help="with --require-witness: at most N entries may lie beyond the largest "
        "checkpoint each required witness cosigned",
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(func=_verify)

    proof = sub.add_parser("proof", help="export an offline proof bundle for one decision")
    proof.add_argument("decision_id")
    proof.add_argument("-o", "--output", help="write the bundle here (default: stdout)")
    proof.add_argument("--tree-size", type=int, default=0, help="prove against this tree size")
    proof.add_argument(
        "--newest",
        action="store_true",
        help="use the newest checkpoint even when an older one carries cosignatures",
    )
    _client_arguments(proof)
    proof.set_defaults(func=_proof)

    check = sub.add_parser("check-proof", help="verify a proof bundle offline")
    check.add_argument("file")
    check.add_argument("--data-dir", help="data directory of `govmesh up` (for its vkey)")
    _key_arguments(check)
    check.set_defaults(func=_check_proof)

    query = sub.add_parser("query", help="entries by decision id, trace id, subject, time")
    query.add_argument("--decision-id")
    query.add_argument("--trace-id")
    query.add_argument("--subject")
    query.add_argument("--since", help="decision time >= this ISO 8601 time")
    query.add_argument("--until", help="decision time < this ISO 8601 time")
    query.add_argument("--limit", type=int, default=100)
    _client_arguments(query)
    query.set_defaults(func=_query)

    tail = sub.add_parser("tail", help="print entries as they are committed (JSON lines)")
    tail.add_argument("--from", dest="start", type=int, default=0, help="first index")
    tail.add_argument("--from-end", action="store_true", help="only entries committed from now")
    tail.add_argument("--count", type=int, default=0, help="stop after this many entries")
    _client_arguments(tail)
    tail.set_defaults(func=_tail)

    checkpoint = sub.add_parser("checkpoint", help="print the newest signed checkpoint")
    checkpoint.add_argument("--witnessed", action="store_true", help="the newest cosigned one")
    _client_arguments(checkpoint)
    checkpoint.set_defaults(func=_checkpoint)

    vkey = sub.add_parser("vkey", help="print the log's C2SP verifier key")
    vkey.add_argument("--keys-dir", help="GOVMESH_KEYS_DIR")
    vkey.add_argument("--origin", help=f"checkpoint origin (default {DEFAULT_ORIGIN})")
    vkey.set_defaults(func=_vkey)

    witness: argparse.ArgumentParser = commands.add_parser(
        "witness", help="cosign lineage checkpoints after checking they only grow"
    )
    wsub = witness.add_subparsers(dest="witness_command", required=True, metavar="COMMAND")
    keygen = wsub.add_parser("keygen", help="write a witness key; prints its verifier key")
    keygen.add_argument("file")
    keygen.add_argument("--name", required=True, help="witness name, e.g. witness.example/w1")
    keygen.set_defaults(func=_witness_keygen)
    run = wsub.add_parser("run", help="watch the log and cosign each new checkpoint")
    run.add_argument("--key", required=True, help="the witness key from `govmesh witness keygen`")
    run.add_argument("--name", help="witness name (default: the key's kid)")
    run.add_argument("--log-vkey", required=True, help="the log's verifier key, or a file")
    run.add_argument("--origin", help="the log's origin (default: its key name)")
    run.add_argument("--state", required=True, help="file remembering the last cosigned checkpoint")
    run.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    run.add_argument("--once", action="store_true", help="check once; exit 1 on refusal")
    run.add_argument("--lineage", dest="target", help="lineage host:port")
    run.add_argument("--data-dir", help="data directory of `govmesh up`")
    run.add_argument("--timeout", type=float, default=10.0)
    run.add_argument("--log-level", default="INFO")
    run.set_defaults(func=_witness_run)
