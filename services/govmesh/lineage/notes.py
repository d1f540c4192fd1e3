"""C2SP signed notes, checkpoints and cosignatures, with Ed25519.

* c2sp.org/signed-note: a text ending in a newline, a blank line, then
  signature lines `— <name> base64(key id || signature)`. Verifier keys are
  written `<name>+<hex key id>+base64(type || public key)`.
* c2sp.org/tlog-checkpoint: the note text is `<origin>\\n<size>\\n<base64 root>\\n`
  plus optional extension lines; the log signs it with signature type 0x01.
* c2sp.org/tlog-cosignature: a witness signs `cosignature/v1\\ntime <t>\\n`
  followed by the checkpoint text, with type 0x04; its signature bytes are
  key id || u64 timestamp || Ed25519 signature.

Key ids are SHA-256(name || 0x0A || type || public key)[:4] throughout.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from govmesh.runtime.errors import InvalidInput

#: Signature type of plain Ed25519 note signatures (the log's checkpoints).
ED25519 = 0x01
#: Signature type of timestamped Ed25519 cosignatures (witnesses).
COSIGNATURE_V1 = 0x04

EM_DASH = "\u2014"
MAX_SIGNATURES = 100
MAX_NOTE_BYTES = 1 << 20
_NAME = re.compile(r"[^\s+]+")
_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")
_MAX_SIZE = (1 << 63) - 1


class NoteError(InvalidInput, ValueError):
    """A note, key or checkpoint that is malformed or does not verify."""


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise NoteError("not standard base64") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def key_id(name: str, sig_type: int, public_key: bytes) -> bytes:
    """SHA-256(name || 0x0A || type || public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([sig_type]) + public_key).digest()[:4]


def check_key_name(name: str) -> str:
    """A key name: non-empty, no Unicode spaces, no plus."""
    if not _NAME.fullmatch(name):
        raise NoteError(f"key name {name!r} is empty or holds a space or '+'")
    return name


@dataclass(frozen=True)
class VerifierKey:
    """A public key that verifies note signatures of one name and type."""

    name: str
    sig_type: int
    public_key: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if self.sig_type not in (ED25519, COSIGNATURE_V1):
            raise NoteError(f"signature type 0x{self.sig_type:02x} is not supported")
        if len(self.public_key) != 32:
            raise NoteError("an Ed25519 public key is 32 bytes")

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.sig_type, self.public_key)

    @classmethod
    def parse(cls, vkey: str) -> VerifierKey:
        """Parse `<name>+<hex key id>+<base64(type || key)>`; the key id must match."""
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3:
            raise NoteError("a verifier key is <name>+<key id>+<key>")
        name, hex_id, material = parts
        if not re.fullmatch(r"[0-9a-f]{8}", hex_id):
            raise NoteError("the key id of a verifier key is 8 lowercase hex digits")
        raw = _b64decode(material)
        if not raw:
            raise NoteError("a verifier key holds no key")
        key = cls(name=check_key_name(name), sig_type=raw[0], public_key=raw[1:])
        if key.key_id.hex() != hex_id:
            raise NoteError("the key id does not match the key")
        return key

    def encode(self) -> str:
        """The verifier key string."""
        material = _b64(bytes([self.sig_type]) + self.public_key)
        return f"{self.name}+{self.key_id.hex()}+{material}"

    def _verify(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


def _public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class NoteSigner:
    """Signs note texts with an Ed25519 key (type 0x01): how the log signs checkpoints."""

    name: str
    private_key: Ed25519PrivateKey

    @property
    def verifier(self) -> VerifierKey:
        return VerifierKey(self.name, ED25519, _public_bytes(self.private_key))

    def signature_line(self, text: str) -> str:
        """`— <name> base64(key id || signature)` over `text`, with its newline."""
        check_text(text)
        signature = self.private_key.sign(text.encode())
        return f"{EM_DASH} {self.name} {_b64(self.verifier.key_id + signature)}\n"

    def sign(self, text: str) -> str:
        """The whole signed note."""
        return text + "\n" + self.signature_line(text)


@dataclass(frozen=True)
class Cosigner:
    """Cosigns checkpoints with an Ed25519 key (type 0x04): how a witness signs."""

    name: str
    private_key: Ed25519PrivateKey

    @property
    def verifier(self) -> VerifierKey:
        return VerifierKey(self.name, COSIGNATURE_V1, _public_bytes(self.private_key))

    def signature_line(self, text: str, timestamp: int) -> str:
        """The cosignature line over checkpoint `text` at POSIX time `timestamp`."""
        check_text(text)
        if not 0 <= timestamp <= _MAX_SIZE:
            raise NoteError("a cosignature timestamp is 0..2^63-1")
        signature = self.private_key.sign(cosigned_message(text, timestamp))
        blob = self.verifier.key_id + struct.pack(">Q", timestamp) + signature
        return f"{EM_DASH} {self.name} {_b64(blob)}\n"


def cosigned_message(text: str, timestamp: int) -> bytes:
    """What a cosignature/v1 signs."""
    return f"cosignature/v1\ntime {timestamp}\n{text}".encode()


def check_text(text: str) -> None:
    """A note text: non-empty lines of UTF-8 without control characters, ending in newline."""
    if not text.endswith("\n"):
        raise NoteError("a note text ends with a newline")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise NoteError("a note holds a control character")


@dataclass(frozen=True)
class Signature:
    """One signature line of a note."""

    name: str
    key_id: bytes
    signature: bytes  # after the key id
    line: str

    @property
    def cosignature_time(self) -> int | None:
        """The timestamp of a cosignature/v1 (None when the bytes cannot be one)."""
        if len(self.signature) != 8 + 64:
            return None
        value: int = struct.unpack(">Q", self.signature[:8])[0]
        return value


@dataclass(frozen=True)
class Note:
    """A parsed, not yet verified, signed note."""

    text: str
    signatures: tuple[Signature, ...]

    def verified_by(self, key: VerifierKey) -> Signature | None:
        """The signature of `key` if it is on the note and valid.

        A signature with the key's name and id that does not verify raises:
        a known key that fails is a forgery, not an unknown signer.
        """
        for sig in self.signatures:
            if sig.name != key.name or sig.key_id != key.key_id:
                continue
            if key.sig_type == ED25519:
                valid = len(sig.signature) == 64 and key._verify(self.text.encode(), sig.signature)
            else:
                stamp = sig.cosignature_time
                valid = stamp is not None and key._verify(
                    cosigned_message(self.text, stamp), sig.signature[8:]
                )
            if not valid:
                raise NoteError(f"the signature of {key.name}+{key.key_id.hex()} does not verify")
            return sig
        return None

    def render(self) -> str:
        """The note as text again."""
        return self.text + "\n" + "".join(s.line for s in self.signatures)


def parse_signature_line(line: str) -> Signature:
    """Parse one `— <name> <base64>` line (with or without its newline)."""
    body = line.removesuffix("\n")
    prefix = EM_DASH + " "
    if not body.startswith(prefix):
        raise NoteError("a signature line starts with an em dash and a space")
    name, sep, blob = body[len(prefix) :].partition(" ")
    if not sep or " " in blob:
        raise NoteError("a signature line is '— <name> <base64>'")
    raw = _b64decode(blob)
    if len(raw) < 5:
        raise NoteError("a signature is a key id and at least one byte")
    return Signature(check_key_name(name), raw[:4], raw[4:], body + "\n")


def parse_note(note: str) -> Note:
    """Split a signed note into its text and signature lines; verifies nothing."""
    if len(note.encode()) > MAX_NOTE_BYTES:
        raise NoteError("note is too large")
    if any(ord(c) < 0x20 and c != "\n" for c in note):
        raise NoteError("a note holds a control character")
    if not note.endswith("\n"):
        raise NoteError("a note ends with a newline")
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("a note has a blank line before its signatures")
    text = note[: split + 1]
    lines = note[split + 2 :].splitlines(keepends=True)
    if not lines:
        raise NoteError("a note has at least one signature")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError("a note has too many signatures")
    return Note(text, tuple(parse_signature_line(line) for line in lines))


def open_note(note: str, key: VerifierKey) -> Note:
    """Parse `note` and require a valid signature by `key`."""
    parsed = parse_note(note)
    if parsed.verified_by(key) is None:
        raise NoteError(f"the note carries no signature of {key.name}+{key.key_id.hex()}")
    return parsed


# --- checkpoints ------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """The text of a C2SP tlog checkpoint."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        """`<origin>\\n<size>\\n<base64 root>\\n[extension lines\\n]`."""
        lines = [self.origin, str(self.size), _b64(self.root), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse a checkpoint text (the note text, without signatures)."""
        check_text(text)
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise NoteError("a checkpoint has an origin, a size and a root hash")
        origin, size, root, *extensions = lines
        if not origin:
            raise NoteError("a checkpoint origin is not empty")
        if not _SIZE.fullmatch(size) or int(size) > _MAX_SIZE:
            raise NoteError(f"checkpoint size {size!r} is not a decimal number")
        root_hash = _b64decode(root)
        if len(root_hash) != 32:
            raise NoteError("a checkpoint root hash is 32 bytes")
        if any(not line for line in extensions):
            raise NoteError("checkpoint extension lines are not empty")
        return cls(origin, int(size), root_hash, tuple(extensions))


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint whose log signature verified, with its whole note."""

    checkpoint: Checkpoint
    note: Note

    @property
    def size(self) -> int:
        return self.checkpoint.size

    @property
    def root(self) -> bytes:
        return self.checkpoint.root


def open_checkpoint(
    note: str, log_key: VerifierKey, *, origin: str | None = None
) -> SignedCheckpoint:
    """Verify the log's signature on a checkpoint note and parse it.

    The origin must be `origin` (default: the log key's name, as C2SP
    recommends for logs).
    """
    parsed = open_note(note, log_key)
    checkpoint = Checkpoint.parse(parsed.text)
    expected = origin if origin is not None else log_key.name
    if checkpoint.origin != expected:
        raise NoteError(f"checkpoint origin {checkpoint.origin!r} is not {expected!r}")
    return SignedCheckpoint(checkpoint, parsed)
