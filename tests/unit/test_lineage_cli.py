"""`govmesh lineage` and `govmesh witness` commands that need no service."""

from __future__ import annotations

from pathlib import Path

import pytest

from govmesh.cli.devsetup import DevSetup
from govmesh.cli.main import main
from govmesh.lineage.keys import DEFAULT_ORIGIN
from govmesh.lineage.notes import COSIGNATURE_V1, ED25519, VerifierKey


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
