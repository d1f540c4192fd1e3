"""`govmesh lineage` and `govmesh witness` commands that need no service."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from govmesh.cli.devsetup import DevSetup
from govmesh.cli.main import main
from govmesh.lineage import merkle
from govmesh.lineage.auditor import AuditSetupError, read_anchor
from govmesh.lineage.keys import DEFAULT_ORIGIN, load_log_signer
from govmesh.lineage.notes import COSIGNATURE_V1, ED25519, Checkpoint, NoteSigner, VerifierKey


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "GOVMESH_LINEAGE_VKEY",
        "GOVMESH_TRUST_FILE",
        "GOVMESH_KEYS_DIR",
        "GOVMESH_LINEAGE_WITNESSES",
        "GOVMESH_LINEAGE_ORIGIN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GOVMESH_DATA_DIR", str(tmp_path / "no-data-dir"))


def test_keys_init_writes_the_lineage_verifier_key_the_vkey_command_prints(
    dev_setup: DevSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    written = dev_setup.lineage_vkey.read_text().strip()
    key = VerifierKey.parse(written)
    assert key.name == DEFAULT_ORIGIN and key.sig_type == ED25519
    assert main(["lineage", "vkey", "--keys-dir", str(dev_setup.keys_dir)]) == 0
    assert capsys.readouterr().out.strip() == written


def test_the_trust_file_locates_the_verifier_key(
    dev_setup: DevSetup, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GOVMESH_TRUST_FILE", str(dev_setup.trust_file))
    assert main(["lineage", "check-proof", str(dev_setup.root / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_check_proof_without_a_trusted_key_says_how_to_name_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "bundle.json"
    bundle.write_text("{}")
    assert main(["lineage", "check-proof", str(bundle)]) == 2
    assert "--vkey" in capsys.readouterr().err


def test_a_witness_key_is_not_accepted_as_the_log_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "w.jwk.json"
    assert main(["witness", "keygen", str(key_file), "--name", "witness.test/w1"]) == 0
    vkey = capsys.readouterr().out.strip()
    assert VerifierKey.parse(vkey).sig_type == COSIGNATURE_V1
    bundle = tmp_path / "bundle.json"
    bundle.write_text("{}")
    assert main(["lineage", "check-proof", str(bundle), "--vkey", vkey]) == 2
    assert "expected a log (Ed25519) key" in capsys.readouterr().err


def test_witness_keygen_never_overwrites_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "w.jwk.json"
    assert main(["witness", "keygen", str(key_file), "--name", "w"]) == 0
    before = key_file.read_text()
    assert main(["witness", "keygen", str(key_file), "--name", "w"]) == 2
    assert key_file.read_text() == before
    assert "not overwriting" in capsys.readouterr().err


def test_a_malformed_bundle_is_invalid_not_a_traceback(
    dev_setup: DevSetup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "bundle.json"
    bundle.write_text('{"format": "govmesh-lineage-proof/v1", "index": "x"}')
    code = main(["lineage", "check-proof", str(bundle), "--vkey", str(dev_setup.lineage_vkey)])
    assert code == 1
    assert capsys.readouterr().out.startswith("INVALID:")


# --- what `lineage verify` is asked to hold the log to is checked before it reads the log

#: Nothing listens here: a verify that got past its setup fails to connect (exit 2 too).
NOWHERE = "postgresql://postgres@127.0.0.1:1/nowhere"


def _signed(dev_setup: DevSetup, size: int = 3, origin: str = DEFAULT_ORIGIN) -> str:
    signer = load_log_signer(dev_setup.keys_dir, DEFAULT_ORIGIN)
    return signer.sign(Checkpoint(origin, size, merkle.EMPTY_ROOT).text())


def _verify(dev_setup: DevSetup, *args: str) -> int:
    vkey = str(dev_setup.lineage_vkey)
    return main(["lineage", "verify", "--database-url", NOWHERE, "--vkey", vkey, *args])


def test_an_anchor_is_read_from_a_note_a_bundle_a_witness_state_or_an_answer(
    dev_setup: DevSetup,
) -> None:
    key = VerifierKey.parse(dev_setup.lineage_vkey.read_text())
    note = _signed(dev_setup, 7)
    texts = [
        note,
        json.dumps({"format": "govmesh-lineage-proof/v1", "checkpoint": note}),
        json.dumps({"origin": DEFAULT_ORIGIN, "size": 7, "root": "", "checkpoint": note}),
        json.dumps({"decision": "ALLOW", "lineage": {"tree_size": 7, "checkpoint": note}}),
    ]
    for text in texts:
        anchor = read_anchor(text, label="a", log_key=key)
        assert (anchor.size, anchor.root) == (7, merkle.EMPTY_ROOT)
    # A witness state from before it kept the log's signature: the text alone proves nothing.
    unsigned = json.dumps({"checkpoint": Checkpoint(DEFAULT_ORIGIN, 7, bytes(32)).text()})
    for text in (unsigned, json.dumps({"decision": "DENY"}), "[]", "not a note\n"):
        with pytest.raises(AuditSetupError):
            read_anchor(text, label="a", log_key=key)


def test_an_anchor_signed_by_another_key_or_for_another_origin_is_refused(
    dev_setup: DevSetup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = NoteSigner(DEFAULT_ORIGIN, Ed25519PrivateKey.generate())
    cases = {
        "other-key": other.sign(Checkpoint(DEFAULT_ORIGIN, 3, merkle.EMPTY_ROOT).text()),
        "other-origin": _signed(dev_setup, origin="elsewhere.test/log"),
        "garbage": "{not json",
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        assert _verify(dev_setup, "--anchor", str(path)) == 2, name
        err = capsys.readouterr().err
        assert f"anchor {path} is not a checkpoint signed by the log key" in err, err
        assert "cannot reach the database" not in err
    assert _verify(dev_setup, "--anchor", str(tmp_path / "absent")) == 2
    assert "cannot read anchor" in capsys.readouterr().err
    # The same checks let a good anchor through, to the database that is not there.
    good = tmp_path / "good"
    good.write_text(_signed(dev_setup))
    assert _verify(dev_setup, "--anchor", str(good)) == 2
    assert "cannot reach the database" in capsys.readouterr().err


def test_a_required_witness_needs_its_key_and_a_bound_needs_a_required_witness(
    dev_setup: DevSetup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "w.jwk.json"
    assert main(["witness", "keygen", str(key_file), "--name", "witness.test/w1"]) == 0
    vkey = capsys.readouterr().out.strip()
    assert _verify(dev_setup, "--require-witness", "witness.test/w1") == 2
    assert "required witness witness.test/w1 is not among the witness keys" in (
        capsys.readouterr().err
    )
    assert _verify(dev_setup, "--witness", vkey, "--max-unwitnessed", "5") == 2
    assert "needs a required witness" in capsys.readouterr().err
    required = ("--witness", vkey, "--require-witness", "witness.test/w1")
    assert _verify(dev_setup, *required, "--max-unwitnessed", "-1") == 2
    assert "0 or more" in capsys.readouterr().err
    assert _verify(dev_setup, *required, "--max-unwitnessed", "0") == 2
    assert "cannot reach the database" in capsys.readouterr().err
