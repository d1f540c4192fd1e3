"""Required witnesses: who must have cosigned the log, and how far."""

from __future__ import annotations

from collections.abc import Sequence

from govmesh.lineage.auditor.report import (
    AuditSetupError,
    Finding,
    FindingKind,
    RequiredWitness,
    WitnessSummary,
    span,
)
from govmesh.lineage.notes import VerifierKey


def check_required_witnesses(
    names: Sequence[str], witnesses: Sequence[VerifierKey], max_unwitnessed: int | None
) -> None:
    """Raise AuditSetupError unless every required witness has a key given and
    `max_unwitnessed`, when set, is a bound on at least one required witness."""
    keys = {w.name for w in witnesses}
    for name in names:
        if name not in keys:
            raise AuditSetupError(
                f"required witness {name} is not among the witness keys given "
                f"({', '.join(sorted(keys)) or 'none'}): give its key with --witness"
            )
    if max_unwitnessed is not None:
        if max_unwitnessed < 0:
            raise AuditSetupError("the number of unwitnessed entries allowed is 0 or more")
        if not names:
            raise AuditSetupError(
                "a bound on unwitnessed entries needs a required witness to count them for"
            )


def check_witnessed(
    names: Sequence[str],
    summaries: Sequence[WitnessSummary],
    *,
    entries: int,
    max_unwitnessed: int | None,
) -> tuple[list[RequiredWitness], list[Finding]]:
    """Step 7: each required witness must have validly cosigned a checkpoint, and
    with `max_unwitnessed` at most that many entries may lie beyond the largest."""
    required: list[RequiredWitness] = []
    findings: list[Finding] = []
    for name in names:
        cosigned = [s for w in summaries if w.name == name for s in w.cosigned]
        largest = max(cosigned, default=None)
        if largest is None:
            required.append(RequiredWitness(name))
            findings.append(
                Finding(
                    FindingKind.WITNESS,
                    f"required witness {name} cosigned no checkpoint of the log",
                )
            )
            continue
        unwitnessed = max(0, entries - largest)
        required.append(RequiredWitness(name, largest, unwitnessed))
        if max_unwitnessed is not None and unwitnessed > max_unwitnessed:
            findings.append(
                Finding(
                    FindingKind.WITNESS,
                    f"entries {span(largest, entries - 1)} "
                    f"({unwitnessed}) lie beyond the largest checkpoint required "
                    f"witness {name} cosigned; at most {max_unwitnessed} may",
                )
            )
    return required, findings
