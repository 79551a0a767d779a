"""Security of the files llmstack leaves on disk: a CA that can only vouch for the stack's own
names and whose key is not kept, private key files checked like `.env`, and an export that
never replaces another project's `.env`."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from llmstack import doctor, initialize, project, tls
from llmstack.errors import SecretsError, UserError
from llmstack.export import COMPOSE_FILE, from_project, write
from tests.helpers import cli
from tests.unit.test_secrets_tls import _handshake


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the local CA -------------------------------------------------------------------------------


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _ca(certs: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((certs / tls.CA_CERT).read_bytes())


def _trusted(certs: Path, leaf: x509.Certificate, host: str) -> bool:
    """Does a client trusting only certs/ca.crt accept `leaf` for `host`?"""
    verifier = PolicyBuilder().store(Store([_ca(certs)])).build_server_verifier(
        _general_name(host))
    try:
        verifier.verify(leaf, [])
    except VerificationError:
        return False
    return True


@pytest.fixture
def generate_keeping_ca_key(monkeypatch: pytest.MonkeyPatch) -> Any:
    """tls.generate, also returning the CA key it used: the key an attacker holding the old
    certs/ca.key (or a backup of it) would sign with."""
    made: list[ec.EllipticCurvePrivateKey] = []
    real = ec.generate_private_key

    def spy(curve: ec.EllipticCurve, *args: Any) -> ec.EllipticCurvePrivateKey:
        made.append(real(curve, *args))
        return made[-1]

    def run(certs: Path, domain: str) -> ec.EllipticCurvePrivateKey:
        made.clear()
        with monkeypatch.context() as m:
            m.setattr(tls.ec, "generate_private_key", spy)
            tls.generate(certs, domain)
        ca_public = _ca(certs).public_key()
        return next(k for k in made if k.public_key() == ca_public)

    return run


def _leaf(certs: Path, ca_key: ec.EllipticCurvePrivateKey, host: str
          ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A well-formed server certificate for `host` only, signed by the CA in certs/."""
    ca = _ca(certs)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([_general_name(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False,
                                         False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


@pytest.mark.parametrize(("domain", "accepted", "rejected"), [
    ("api.example.com", ["api.example.com", "localhost", "127.0.0.1", "::1"],
     ["evil.example.com", "example.com", "bank.test", "8.8.8.8", "127.0.0.2", "::2"]),
    ("192.168.1.20", ["192.168.1.20", "localhost", "127.0.0.1", "::1"],
     ["192.168.1.21", "8.8.8.8", "evil.example.com"]),
    ("2001:db8::5", ["2001:db8::5", "::1"], ["2001:db8::6", "8.8.8.8", "evil.example.com"]),
])
def test_the_ca_vouches_only_for_the_stack_names(tmp_path: Path, generate_keeping_ca_key: Any,
                                                 domain: str, accepted: list[str],
                                                 rejected: list[str]) -> None:
    ca_key = generate_keeping_ca_key(tmp_path, domain)
    for host in accepted:
        assert _trusted(tmp_path, _leaf(tmp_path, ca_key, host)[0], host), host
    for host in rejected:
        assert not _trusted(tmp_path, _leaf(tmp_path, ca_key, host)[0], host), host


def test_openssl_clients_reject_a_certificate_for_another_site(tmp_path: Path,
                                                               generate_keeping_ca_key: Any
                                                               ) -> None:
    """What curl, requests and httpx do (OpenSSL): a leaf for evil.example.com signed by the
    stack's CA fails the handshake even though the client trusts ca.crt."""
    certs = tmp_path / "certs"
    ca_key = generate_keeping_ca_key(certs, "api.example.com")
    evil_dir = tmp_path / "evil"
    evil_dir.mkdir()
    cert, key = _leaf(certs, ca_key, "evil.example.com")
    pem = serialization.Encoding.PEM
    (evil_dir / tls.CA_CERT).write_bytes((certs / tls.CA_CERT).read_bytes())
    (evil_dir / tls.CERT).write_bytes(cert.public_bytes(pem))
    (evil_dir / tls.KEY).write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(evil_dir, "evil.example.com")


def test_the_name_constraints_are_critical_and_exclude_nothing(tmp_path: Path) -> None:
    tls.generate(tmp_path, "api.example.com")
    ext = _ca(tmp_path).extensions.get_extension_for_class(x509.NameConstraints)
    assert ext.critical  # a client that cannot enforce them must refuse the CA
    assert ext.value.excluded_subtrees is None
    assert ext.value.permitted_subtrees == [
        x509.DNSName("api.example.com"), x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_network("127.0.0.1/32")),
        x509.IPAddress(ipaddress.ip_network("::1/128"))]


@pytest.mark.parametrize("domain", ["api.example.com", "localhost", "192.168.1.20"])
def test_the_generated_server_certificate_verifies_for_every_name_it_carries(
        tmp_path: Path, domain: str) -> None:
    tls.generate(tmp_path, domain)
    chain = x509.load_pem_x509_certificates((tmp_path / tls.CERT).read_bytes())
    for host in dict.fromkeys([domain, "localhost", "127.0.0.1", "::1"]):
        assert _trusted(tmp_path, chain[0], host), host
    assert not _trusted(tmp_path, chain[0], "evil.example.com")


def test_generate_keeps_no_ca_key_on_disk(tmp_path: Path) -> None:
    tls.generate(tmp_path, "api.example.com")
    assert not (tmp_path / "ca.key").exists()
    holding_keys = sorted(p.name for p in tmp_path.iterdir() if b"PRIVATE KEY" in p.read_bytes())
    assert holding_keys == [tls.KEY]


def test_init_force_moves_a_legacy_ca_key_into_a_private_backup(tmp_path: Path) -> None:
    initialize.init(tmp_path)
    certs = tmp_path / "certs"
    legacy = b"-----BEGIN PRIVATE KEY-----\nold CA key\n-----END PRIVATE KEY-----\n"
    (certs / "ca.key").write_bytes(legacy)
    os.chmod(certs / "ca.key", 0o644)  # as an earlier version or a careless copy left it
    os.chmod(certs / tls.KEY, 0o644)
    old_tls_key = (certs / tls.KEY).read_bytes()
    initialize.init(tmp_path, force=True)
    assert not (certs / "ca.key").exists()
    [ca_backup] = certs.glob("ca.key.bak-*")
    assert ca_backup.read_bytes() == legacy and mode(ca_backup) == 0o600
    [tls_backup] = certs.glob("tls.key.bak-*")
    assert tls_backup.read_bytes() == old_tls_key and mode(tls_backup) == 0o600
    assert mode(certs / tls.KEY) == 0o600


# --- private key files: doctor and up -----------------------------------------------------------


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    initialize.init(root)
    return root


def _key_findings(root: Path) -> list[doctor.Finding]:
    spec = project.load(root).spec
    return [f for f in doctor.local_findings(root, spec) if f.check == "key-file"]


def test_doctor_fails_a_tls_key_other_users_can_read(proj: Path) -> None:
    key = proj / "certs" / tls.KEY
    os.chmod(key, 0o644)
    [finding] = _key_findings(proj)
    assert (finding.status, finding.scope) == ("fail", "config")
    assert str(key) in finding.detail and "0644" in finding.detail
    assert finding.fix.endswith(f"chmod 600 {key}")
    os.chmod(key, 0o600)
    assert [f.status for f in _key_findings(proj)] == ["ok"]


def test_doctor_fails_a_readable_legacy_ca_key_and_says_it_is_not_needed(proj: Path) -> None:
    legacy = proj / "certs" / "ca.key"
    legacy.write_bytes(b"-----BEGIN PRIVATE KEY-----\nold\n-----END PRIVATE KEY-----\n")
    os.chmod(legacy, 0o640)
    found = {f.status: f for f in _key_findings(proj)}
    assert found["fail"].fix.endswith(f"chmod 600 {legacy}")
    assert "init --force" in found["warn"].fix
    os.chmod(legacy, 0o600)
    assert [f.status for f in _key_findings(proj)] == ["warn"]


def test_up_refuses_a_tls_key_other_users_can_read(proj: Path) -> None:
    """`up` ships nginx's files from Loaded.nginx_secret_files: a readable key stops it there,
    before anything reaches the engine."""
    key = proj / "certs" / tls.KEY
    os.chmod(key, 0o604)
    with pytest.raises(SecretsError) as err:
        project.load(proj).nginx_secret_files()
    assert str(key) in err.value.message and err.value.hint.endswith(f"chmod 600 {key}")
    os.chmod(key, 0o600)
    assert project.load(proj).nginx_secret_files()["secrets/tls.key"][0] == key.read_bytes()


def test_a_command_reading_the_tls_key_exits_1_naming_the_file_and_the_fix(proj: Path) -> None:
    key = proj / "certs" / tls.KEY
    os.chmod(key, 0o644)
    proc = cli("export", "compose", "-C", str(proj))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"chmod 600 {key}" in proc.stderr and "Traceback" not in proc.stderr
    assert not (proj / "compose").exists()


# --- export compose never replaces another project's .env --------------------------------------


def test_export_refuses_another_project_folder_and_leaves_its_env_alone(tmp_path: Path,
                                                                        proj: Path) -> None:
    other = tmp_path / "other"
    initialize.init(other)
    env_before = (other / ".env").read_bytes()
    proc = cli("export", "compose", "-C", str(proj), "--out", str(other))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert str(other) in proc.stderr and "llmstack export compose" in proc.stderr
    assert (other / ".env").read_bytes() == env_before
    assert mode(other / ".env") == 0o600
    assert not (other / COMPOSE_FILE).exists()


def test_export_refuses_a_folder_with_an_llmstack_env_and_no_stack_yaml(tmp_path: Path,
                                                                       proj: Path) -> None:
    backup = tmp_path / "keys-backup"
    backup.mkdir()
    (backup / ".env").write_bytes((proj / ".env").read_bytes())
    env_before = (backup / ".env").read_bytes()
    with pytest.raises(UserError) as err:
        write(from_project(project.load(proj)), backup)
    assert str(backup) in err.value.message and "empty folder" in err.value.hint
    assert (backup / ".env").read_bytes() == env_before
    assert sorted(p.name for p in backup.iterdir()) == [".env"]


def test_a_folder_written_by_export_can_be_written_again(tmp_path: Path, proj: Path) -> None:
    out = tmp_path / "deploy"
    cli("export", "compose", "-C", str(proj), "--out", str(out), check=True)
    (out / COMPOSE_FILE).write_text("# stale\n")
    cli("export", "compose", "-C", str(proj), "--out", str(out), check=True)
    assert (out / COMPOSE_FILE).read_text().startswith("# Generated by `llmstack export")
    assert (out / ".env").read_text() == "COMPOSE_PROJECT_NAME=llmstack\n"
