"""Development artifacts and the first request:

    govmesh mandate issue [--scope ACTION=RESOURCE ...] [--env KEY=VALUE ...] > mandate.jwt
    govmesh attest [--env KEY=VALUE ...] [--measurement sha256:HEX ...] > attestation.jwt
    govmesh authorize --action A --resource R --context JSON --mandate mandate.jwt \
        [--attestation attestation.jwt]

They sign with the development issuer, attestor and agent keys of
`govmesh up` (or of --dev-dir, a `govmesh keys init` directory). Patterns in
--scope use `*` as glob; a --env key given twice binds to any of its values.
`authorize` signs a fresh proof of possession for exactly the request it sends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from govmesh.cli.devsetup import (
    DEV_ATTESTOR,
    DEV_ENV,
    DEV_ISSUER,
    DEV_MEASUREMENT,
    DEV_SUBJECT,
    DevSetup,
)
from govmesh.cli.paths import add_data_dir_argument, data_dir, dev_setup
from govmesh.client import EngineClient, Initiator, issue_attestation, issue_mandate
from govmesh.runtime.errors import ConfigurationError


def _setup(args: argparse.Namespace) -> DevSetup:
    setup = DevSetup(Path(args.dev_dir)) if args.dev_dir else dev_setup(data_dir(args.data_dir))
    if not setup.exists():
        raise ConfigurationError(
            f"no development setup at {setup.root}: run `govmesh up` or `govmesh keys init DIR`"
        )
    return setup


def _pairs(values: list[str], what: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key:
            raise ConfigurationError(f"{what} takes KEY=VALUE, got {value!r}")
        pairs.append((key, item))
    return pairs


def _binding(values: list[str] | None) -> dict[str, Any]:
    """--env pairs as an env binding: a key given twice binds to any of its values."""
    binding: dict[str, Any] = {}
    for key, value in _pairs(values or [], "--env"):
        if key not in binding:
            binding[key] = value
        elif isinstance(binding[key], list):
            binding[key].append(value)
        else:
            binding[key] = [binding[key], value]
    return binding


def _observed(values: list[str]) -> dict[str, str]:
    """--env pairs as an observed environment: one value per key."""
    observed: dict[str, str] = {}
    for key, value in _pairs(values, "--env"):
        if key in observed:
            raise ConfigurationError(f"--env {key} given twice; an attestation observes one value")
        observed[key] = value
    return observed


def _read_token(value: str | None) -> str:
    if not value:
        return ""
    if value == "-":
        return sys.stdin.read().strip()
    if value.count(".") == 2 and "/" not in value:
        return value.strip()  # a compact JWS given inline
    try:
        return Path(value).read_text().strip()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {value}: {exc.strerror}") from None


def _mandate(args: argparse.Namespace) -> int:
    setup = _setup(args)
    agent = Initiator(setup.dev_key("agent"))
    scope = [
        {"action": action, "resource": resource}
        for action, resource in _pairs(
            args.scope or ["payments.transfer=account:acme/*"], "--scope"
        )
    ]
    attribution = dict(_pairs(args.att or [], "--att"))
    print(
        issue_mandate(
            setup.dev_key("issuer"),
            issuer=DEV_ISSUER,
            subject=args.sub,
            holder_thumbprint=agent.thumbprint,
            scope=scope,
            env=_binding(args.env),
            attribution=attribution,
            ttl_s=args.ttl,
        )
    )
    return 0


def _attest(args: argparse.Namespace) -> int:
    setup = _setup(args)
    agent = Initiator(setup.dev_key("agent"))
    print(
        issue_attestation(
            setup.dev_key("attestor"),
            issuer=DEV_ATTESTOR,
            subject=args.sub,
            holder_thumbprint=agent.thumbprint,
            env=_observed(args.env) if args.env else DEV_ENV,
            measurements=args.measurement or [DEV_MEASUREMENT],
            ttl_s=args.ttl,
        )
    )
    return 0


async def _ask(args: argparse.Namespace, setup: DevSetup) -> dict[str, Any]:
    try:
        context = json.loads(args.context)
    except ValueError as exc:
        raise ConfigurationError(f"--context is not JSON: {exc}") from None
    if not isinstance(context, dict):
        raise ConfigurationError("--context must be a JSON object")
    mandate = _read_token(args.mandate)
    agent = Initiator(setup.dev_key("agent"))
    proof = agent.proof(mandate, args.action, args.resource, context)
    async with await EngineClient.connect(args.target, timeout=args.timeout) as engine:
        result = await engine.authorize(
            action=args.action,
            resource=args.resource,
            context=context,
            mandate=mandate,
            proof=proof,
            attestation=_read_token(args.attestation),
        )
    return result.to_dict()


def _authorize(args: argparse.Namespace) -> int:
    answer = asyncio.run(_ask(args, _setup(args)))
    print(json.dumps(answer, indent=2))
    return 0 if answer["decision"] == "ALLOW" else 1


def _dev_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_dir_argument(parser)
    parser.add_argument("--dev-dir", help="a `govmesh keys init` directory to sign with")


def register(commands: Any) -> None:
    mandate = commands.add_parser("mandate", help="development mandates")
    mandate_sub = mandate.add_subparsers(dest="mandate_command", required=True, metavar="COMMAND")
    issue = mandate_sub.add_parser(
        "issue", help="print a mandate signed by the development issuer, bound to the dev agent key"
    )
    _dev_arguments(issue)
    issue.add_argument("--sub", default=DEV_SUBJECT, help="the initiator identity")
    issue.add_argument(
        "--scope",
        action="append",
        metavar="ACTION=RESOURCE",
        help="glob patterns; repeat for more (default payments.transfer=account:acme/*)",
    )
    issue.add_argument(
        "--env",
        action="append",
        metavar="KEY=VALUE",
        help="bind the attested environment; a key given twice means any of its values",
    )
    issue.add_argument(
        "--att", action="append", metavar="KEY=VALUE", help="runtime attribution (session, ...)"
    )
    issue.add_argument("--ttl", type=int, default=600, help="seconds (default 600)")
    issue.set_defaults(func=_mandate)

    attest = commands.add_parser(
        "attest", help="print an attestation signed by the development attestor"
    )
    _dev_arguments(attest)
    attest.add_argument("--sub", default=DEV_SUBJECT, help="the initiator identity")
    attest.add_argument(
        "--env", action="append", metavar="KEY=VALUE", help="observed environment (default: dev)"
    )
    attest.add_argument(
        "--measurement",
        action="append",
        metavar="sha256:HEX",
        help="runtime measurement (default: the development runtime's)",
    )
    attest.add_argument("--ttl", type=int, default=300, help="seconds (default 300)")
    attest.set_defaults(func=_attest)

    authorize = commands.add_parser(
        "authorize", help="ask the engine, with a fresh proof from the development agent key"
    )
    _dev_arguments(authorize)
    authorize.add_argument("--target", default="127.0.0.1:50051", help="the engine")
    authorize.add_argument("--action", required=True)
    authorize.add_argument("--resource", required=True)
    authorize.add_argument("--context", default="{}", help="JSON object")
    authorize.add_argument("--mandate", required=True, help="a token, a file, or - for stdin")
    authorize.add_argument("--attestation", help="a token or a file")
    authorize.add_argument("--timeout", type=float, default=2.0, help="seconds")
    authorize.set_defaults(func=_authorize)
