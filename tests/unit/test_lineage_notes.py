"""C2SP signed notes, checkpoints and cosignatures, against published vectors."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from govmesh.lineage.notes import (
    COSIGNATURE_V1,
    ED25519,
    Checkpoint,
    Cosigner,
    NoteError,
    NoteSigner,
    VerifierKey,
    open_checkpoint,
    open_note,
    parse_note,
)

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "data" / "lineage" / "signed-notes.json").read_text()
)


def _signer_from_go_key(skey: str) -> NoteSigner:
    # PRIVATE+KEY+<name>+<id>+base64(0x01 || seed)
    _, _, name, _, material = skey.split("+", 4)
    raw = base64.b64decode(material)
    assert raw[0] == ED25519
    return NoteSigner(name, Ed25519PrivateKey.from_private_bytes(raw[1:]))


def test_signing_reproduces_the_published_note_byte_for_byte() -> None:
    vector = VECTORS["signing"]
    signer = _signer_from_go_key(vector["signer_key"])
    assert signer.verifier.encode() == vector["vkey"]
    assert signer.sign(vector["text"]) == vector["note"]


def test_the_published_note_opens_with_its_key_and_not_with_another() -> None:
    vector = VECTORS["signing"]
    peter = VerifierKey.parse(vector["vkey"])
    enoch = VerifierKey.parse(VECTORS["second_signature"]["vkey"])
    note = open_note(vector["note"], peter)
    assert note.text == vector["text"]
    with pytest.raises(NoteError, match="no signature"):
        open_note(vector["note"], enoch)


def test_a_note_with_two_signatures_verifies_each_known_key() -> None:
    vector = VECTORS["signing"]
    both = vector["note"] + VECTORS["second_signature"]["line"]
    note = parse_note(both)
    assert len(note.signatures) == 2
    for vkey in (vector["vkey"], VECTORS["second_signature"]["vkey"]):
        assert note.verified_by(VerifierKey.parse(vkey)) is not None


def test_a_tampered_signature_from_a_known_key_is_a_forgery() -> None:
    vector = VECTORS["signing"]
    line = vector["note"].splitlines()[-1]
    blob = bytearray(base64.b64decode(line.split(" ")[-1]))
    blob[10] ^= 1
    forged = vector["note"].replace(line.split(" ")[-1], base64.b64encode(bytes(blob)).decode())
    with pytest.raises(NoteError, match="does not verify"):
        open_note(forged, VerifierKey.parse(vector["vkey"]))


def test_a_changed_text_does_not_verify() -> None:
    vector = VECTORS["signing"]
    changed = vector["note"].replace("cryptography", "cryptographY")
    with pytest.raises(NoteError):
        open_note(changed, VerifierKey.parse(vector["vkey"]))


@pytest.mark.parametrize("vkey", VECTORS["bad_vkeys"])
def test_malformed_verifier_keys_are_refused(vkey: str) -> None:
    with pytest.raises(NoteError):
        VerifierKey.parse(vkey)


def test_every_truncation_of_a_verifier_key_is_refused() -> None:
    vkey = VECTORS["signing"]["vkey"]
    for end in range(len(vkey)):
        with pytest.raises(NoteError):
            VerifierKey.parse(vkey[:end])


def test_the_real_sum_golang_org_checkpoint_verifies() -> None:
    vector = VECTORS["checkpoint"]
    key = VerifierKey.parse(vector["vkey"])
    signed = open_checkpoint(vector["note"], key, origin=vector["origin"])
    assert signed.size == vector["tree_size"]
    assert signed.root == base64.b64decode(vector["root_hash_base64"])
    with pytest.raises(NoteError, match="origin"):
        open_checkpoint(vector["note"], key, origin="another log")
    grown = vector["note"].replace(str(vector["tree_size"]), str(vector["tree_size"] + 1))
    with pytest.raises(NoteError):
        open_checkpoint(grown, key, origin=vector["origin"])


def test_checkpoint_text_matches_the_published_encoding() -> None:
    for vector in VECTORS["checkpoint_bodies"]:
        root = base64.b64decode(vector["root_hash_base64"])
        assert Checkpoint(vector["origin"], vector["tree_size"], root).text() == vector["body"]


@pytest.mark.parametrize(
    "text",
    [
        "Head\n9944\n",
        "\n9944\n" + "A" * 43 + "=\n",
        "Log\nbananas\n" + "A" * 43 + "=\n",
        "Log\n-34\n" + "A" * 43 + "=\n",
        "Log\n012\n" + "A" * 43 + "=\n",
        "Log\n3438945738945739845734895735\n" + "A" * 43 + "=\n",
        "Log\n123\nThisIsn'tBase64\n",
        "Log\n123\n" + "A" * 43 + "=",
        "Log\n123\nYmFuYW5hcw==\n",
    ],
)
def test_malformed_checkpoints_are_refused(text: str) -> None:
    with pytest.raises(NoteError):
        Checkpoint.parse(text)


def test_cosignature_layout_matches_the_published_timestamp_vector() -> None:
    vector = VECTORS["cosignature_timestamp"]
    raw = base64.b64decode(vector["signature_base64"])
    line = f"\u2014 witness {vector['signature_base64']}\n"
    note = parse_note("o\n1\n" + "A" * 43 + "=\n\n" + line)
    assert note.signatures[0].key_id == raw[:4]
    assert note.signatures[0].cosignature_time == vector["timestamp"]


def test_cosignatures_verify_with_the_witness_key_and_commit_to_time_and_text() -> None:
    log = NoteSigner("example.com/log", Ed25519PrivateKey.generate())
    witness = Cosigner("witness.example/w1", Ed25519PrivateKey.generate())
    text = Checkpoint("example.com/log", 5, bytes(32)).text()
    note = log.sign(text) + witness.signature_line(text, 1_700_000_000)
    parsed = open_checkpoint(note, log.verifier).note
    signature = parsed.verified_by(witness.verifier)
    assert signature is not None and signature.cosignature_time == 1_700_000_000
    assert witness.verifier.sig_type == COSIGNATURE_V1
    # The key id separates the signature types: a witness key is not a log key.
    assert (
        witness.verifier.key_id
        != VerifierKey(witness.name, ED25519, witness.verifier.public_key).key_id
    )
    # A different timestamp under the same signature bytes does not verify.
    blob = bytearray(signature.key_id + signature.signature)
    blob[11] ^= 1
    forged = note.replace(
        signature.line.split(" ")[-1].strip(), base64.b64encode(bytes(blob)).decode()
    )
    with pytest.raises(NoteError):
        parse_note(forged).verified_by(witness.verifier)


def test_verifier_keys_round_trip() -> None:
    key = NoteSigner("govmesh.local/lineage", Ed25519PrivateKey.generate()).verifier
    assert VerifierKey.parse(key.encode()) == key


@pytest.mark.parametrize(
    "note",
    [
        "no blank line\n\u2014 a AAAAAAA=\n",
        "text\n\n",
        "text\n\nnot a signature line\n",
        "text\n\n\u2014 bad name AAAAAAA=\n",
        "text\n\n\u2014 name+plus AAAAAAA=\n",
        "text\n\n\u2014 name AAAA\n",
        "te\x01xt\n\n\u2014 name AAAAAAA=\n",
        "text\n\n\u2014 name AAAAAAA=",
    ],
)
def test_malformed_notes_are_refused(note: str) -> None:
    with pytest.raises(NoteError):
        parse_note(note)
