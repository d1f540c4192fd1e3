"""A witness: cosigns lineage checkpoints it has seen grow append-only.

`govmesh witness run` polls the log for its newest checkpoint and, for each
one it has not cosigned yet:

1. Verifies the log's signature and origin.
2. Refuses a checkpoint smaller than the last one it cosigned (a rollback)
   or of the same size with another root (a fork).
3. Asks the log for a consistency proof from the last cosigned checkpoint
   and verifies it between the two signed roots.
4. Records the new checkpoint, as the log signed it, in its state file
   (fsynced) before signing, so it never cosigns two inconsistent
   checkpoints, even across a crash; the state file is also an anchor for
   `govmesh lineage verify --anchor`.
5. Cosigns it (C2SP tlog-cosignature, Ed25519, timestamped) and gives the
   cosignature to the log, which stores it beside the checkpoint.

A witness that refused once keeps refusing until an operator looks: its state
is the evidence of what the log had shown it.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from govmesh.lineage import merkle
from govmesh.lineage.client import LineageClient, LineageError
from govmesh.lineage.notes import Cosigner, NoteError, VerifierKey, open_checkpoint
from govmesh.runtime.durable import durable_write
from govmesh.runtime.errors import IntegrityError

logger = logging.getLogger(__name__)


class WitnessRefusal(IntegrityError):
    """The log showed something the witness must not cosign."""


@dataclass(frozen=True)
class WitnessState:
    """The newest checkpoint this witness cosigned."""

    origin: str
    size: int
    root: bytes
    checkpoint: str  # the signed note, as the log served it

    def to_json(self) -> str:
        return json.dumps(
            {
                "origin": self.origin,
                "size": self.size,
                "root": base64.b64encode(self.root).decode(),
                "checkpoint": self.checkpoint,
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> WitnessState:
        doc = json.loads(text)
        return cls(
            doc["origin"], int(doc["size"]), base64.b64decode(doc["root"]), doc["checkpoint"]
        )


@dataclass(frozen=True)
class Cosigned:
    """A checkpoint this witness just cosigned."""

    size: int
    note: str  # the checkpoint with the witness's cosignature line


class Witness:
    """Checks and cosigns the checkpoints of one log."""

    def __init__(
        self,
        *,
        cosigner: Cosigner,
        log_key: VerifierKey,
        origin: str,
        state_path: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cosigner = cosigner
        self._log_key = log_key
        self._origin = origin
        self._state_path = state_path
        self._clock = clock

    def state(self) -> WitnessState | None:
        """The last cosigned checkpoint, or None for a new witness."""
        try:
            text = self._state_path.read_text()
        except FileNotFoundError:
            return None
        try:
            state = WitnessState.from_json(text)
        except (ValueError, KeyError, TypeError) as exc:
            raise WitnessRefusal(f"witness state {self._state_path} is unreadable: {exc}") from None
        if state.origin != self._origin:
            raise WitnessRefusal(
                f"witness state {self._state_path} is for log {state.origin!r}, "
                f"not {self._origin!r}"
            )
        return state

    def _save(self, state: WitnessState) -> None:
        self._state_path.parent.mkdir(parents=True, exist_ok=True)
        durable_write(self._state_path, state.to_json().encode())

    async def step(self, log: LineageClient) -> Cosigned | None:
        """Cosign the log's newest checkpoint if it is new and consistent; None if not new."""
        answer = await log.checkpoint()
        # 1. The log's own signature.
        try:
            signed = open_checkpoint(answer.checkpoint, self._log_key, origin=self._origin)
        except NoteError as exc:
            raise WitnessRefusal(f"the log's checkpoint does not verify: {exc}") from None
        text = signed.note.text
        state = self.state()
        # 2. Never backwards, never a different tree of the same size.
        if state is not None:
            if signed.size < state.size:
                raise WitnessRefusal(
                    f"the log shows size {signed.size} after this witness cosigned {state.size}"
                )
            if signed.size == state.size:
                if signed.root != state.root:
                    raise WitnessRefusal(f"the log shows two different trees of size {state.size}")
                return None
            # 3. Append-only since the last cosigned checkpoint.
            try:
                proof = await log.consistency_proof(state.size, signed.size)
                merkle.verify_consistency(
                    state.size, signed.size, state.root, signed.root, list(proof.hashes)
                )
            except (merkle.ProofError, LineageError) as exc:
                raise WitnessRefusal(
                    f"size {signed.size} is not proven consistent with cosigned size "
                    f"{state.size}: {exc}"
                ) from None
        # 4. Remember before signing.
        self._save(WitnessState(self._origin, signed.size, signed.root, answer.checkpoint))
        # 5. Cosign and hand the cosignature to the log.
        line = self._cosigner.signature_line(text, int(self._clock()))
        note = text + "\n" + line
        await log.add_cosignature(note)
        logger.info("cosigned", extra={"tree_size": signed.size})
        return Cosigned(signed.size, note)
