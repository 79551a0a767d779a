"""`.env` (keys, 0600, atomic, corrupt lines) and the TLS certificate (SANs, modes, chain)."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from llmstack import fsutil, secrets, tls
from llmstack.errors import SecretsError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- keys ---------------------------------------------------------------------------------------


def test_keys_are_sk_and_at_least_256_random_bits() -> None:
    keys = {secrets.new_key() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert key.startswith("sk-")
        assert secrets.KEY_RE.fullmatch(key)
        raw = base64.urlsafe_b64decode(key[3:] + "=" * (-len(key[3:]) % 4))
        assert len(raw) * 8 >= 256


def test_generate_gives_distinct_master_and_internal_keys() -> None:
    keys = secrets.generate()
    assert keys.master != keys.internal
    assert keys.previous is None


# --- .env ---------------------------------------------------------------------------------------


def test_env_is_written_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    old = os.umask(0)
    try:
        secrets.write_keys(path, secrets.generate())
    finally:
        os.umask(old)
    assert mode(path) == 0o600


def test_env_round_trip_keeps_user_variables(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    keys = secrets.generate()
    secrets.write_keys(path, keys)
    with path.open("a") as handle:
        handle.write("export HF_TOKEN='hf_abc'\n")
    again = secrets.Keys(secrets.new_key(), keys.internal)
    secrets.write_keys(path, again)
    assert secrets.load_keys(path) == again
    assert secrets.read_env(path)["HF_TOKEN"] == "hf_abc"
    assert keys.master not in path.read_text()


def test_env_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The new file is complete and 0600 before it takes the old one's place; a failure
    leaves the old file untouched and no temp file behind."""
    path = tmp_path / ".env"
    first = secrets.generate()
    secrets.write_keys(path, first)
    before = path.read_bytes()
    seen: list[tuple[int, bytes]] = []
    real_replace = os.replace

    def failing_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen.append((mode(Path(src)), Path(src).read_bytes()))
        raise OSError("disk went away")

    monkeypatch.setattr(fsutil.os, "replace", failing_replace)
    second = secrets.generate()
    with pytest.raises(OSError, match="disk went away"):
        secrets.write_keys(path, second)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env"]
    assert seen and seen[0][0] == 0o600
    assert second.master.encode() in seen[0][1]
    monkeypatch.setattr(fsutil.os, "replace", real_replace)
    secrets.write_keys(path, second)
    assert secrets.load_keys(path) == second


def test_world_readable_env_is_refused_with_the_chmod_hint(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    secrets.write_keys(path, secrets.generate())
    path.chmod(0o644)
    with pytest.raises(SecretsError) as info:
        secrets.load_keys(path)
    assert info.value.message == f"{path} is readable by other users (mode 0644)"
    assert info.value.hint == f"run: chmod 600 {path}"
    assert info.value.exit_code == 1


def test_corrupt_line_is_reported_by_number_without_its_value(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    keys = secrets.generate()
    secrets.write_keys(path, keys)
    lines = path.read_text().splitlines()
    lines.append("this-is-sk-secret-junk")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SecretsError) as info:
        secrets.load_keys(path)
    assert info.value.message == f"{path}:{len(lines)}: not a KEY=VALUE line"
    assert "secret-junk" not in info.value.message + info.value.hint
    assert keys.master not in info.value.message + info.value.hint


@pytest.mark.parametrize(("content", "message"), [
    ("LLMSTACK_INTERNAL_KEY=sk-" + "a" * 43 + "\n", "LITELLM_MASTER_KEY is missing"),
    ("LITELLM_MASTER_KEY=short\nLLMSTACK_INTERNAL_KEY=sk-" + "a" * 43 + "\n",
     "LITELLM_MASTER_KEY is not a valid key"),
])
def test_missing_or_malformed_keys(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / ".env"
    fsutil.write_atomic(path, content, mode=0o600)
    with pytest.raises(SecretsError, match=message) as info:
        secrets.load_keys(path)
    assert "short" not in info.value.message


def test_missing_env_says_run_init(tmp_path: Path) -> None:
    with pytest.raises(SecretsError) as info:
        secrets.load_keys(tmp_path / ".env")
    assert "llmstack init" in info.value.hint


def test_quoted_values_and_comments_are_understood(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    master, internal = secrets.new_key(), secrets.new_key()
    fsutil.write_atomic(path, f"# comment\n\nLITELLM_MASTER_KEY=\"{master}\"\n"
                              f"export LLMSTACK_INTERNAL_KEY='{internal}'\n", mode=0o600)
    assert secrets.load_keys(path) == secrets.Keys(master, internal)


def test_backup_of_a_key_is_never_readable_by_others(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The backup exists with mode 0600 from its first byte (no copy-then-chmod window)."""
    path = tmp_path / ".env"
    secrets.write_keys(path, secrets.generate())
    modes: list[int] = []
    real_replace = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        modes.append(mode(Path(src)))
        real_replace(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", spy)
    old = os.umask(0)
    try:
        target = fsutil.backup(path)
    finally:
        os.umask(old)
    assert modes == [0o600]
    assert mode(target) == 0o600 and target.read_bytes() == path.read_bytes()
    assert fsutil.backup(path) != target  # a second backup never replaces the first


# --- rotation -----------------------------------------------------------------------------------


def test_rotation_with_grace_keeps_the_old_key_until_expiry(tmp_path: Path) -> None:
    keys = secrets.generate()
    new = secrets.Keys(secrets.new_key(), keys.internal, keys.master, 1600)
    assert new.accepted(1599) == [new.master, keys.master]
    assert new.accepted(1600) == [new.master]
    path = tmp_path / ".env"
    secrets.write_keys(path, new)
    assert secrets.load_keys(path) == new
    assert mode(path) == 0o600


def test_rotation_without_expiry_keeps_the_old_key_until_finished() -> None:
    keys = secrets.Keys(secrets.new_key(), secrets.new_key(), secrets.new_key(), None)
    assert keys.accepted(10**12) == [keys.master, keys.previous]


def test_bad_rotation_expiry_is_reported(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    keys = secrets.Keys(secrets.new_key(), secrets.new_key(), secrets.new_key(), 60)
    secrets.write_keys(path, keys)
    text = path.read_text().replace(f"{secrets.PREVIOUS_EXPIRES}=60",
                                    f"{secrets.PREVIOUS_EXPIRES}=soon")
    fsutil.write_atomic(path, text, mode=0o600)
    with pytest.raises(SecretsError, match="not a unix time"):
        secrets.load_keys(path)


# --- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    tls.generate(folder, "api.example.com")
    return folder


def leaf(certs: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((certs / tls.CERT).read_bytes())


def test_sans_include_domain_localhost_and_loopback(certs: Path) -> None:
    san = leaf(certs).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["api.example.com", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                       ipaddress.ip_address("::1")]
    assert tls.inspect(certs).names == ["api.example.com", "localhost", "127.0.0.1", "::1"]


def test_ip_domain_becomes_an_ip_san(tmp_path: Path) -> None:
    tls.generate(tmp_path, "192.168.1.20")
    assert "192.168.1.20" in tls.inspect(tmp_path).names
    san = leaf(tmp_path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("192.168.1.20") in san.get_values_for_type(x509.IPAddress)


def test_openssl_shows_the_sans(certs: Path) -> None:
    out = subprocess.run(["openssl", "x509", "-in", str(certs / tls.CERT), "-noout", "-ext",
                          "subjectAltName"], capture_output=True, text=True, check=True).stdout
    assert "DNS:api.example.com" in out
    assert "DNS:localhost" in out
    assert "IP Address:127.0.0.1" in out


def test_key_files_are_0600_and_certificates_public(certs: Path) -> None:
    assert mode(certs / tls.KEY) == 0o600
    assert tls.private_files(certs) == [certs / tls.KEY]  # the CA key is not kept
    assert mode(certs / tls.CERT) == 0o644
    assert mode(certs / tls.CA_CERT) == 0o644


def test_certificate_verifies_against_the_ca(certs: Path) -> None:
    ca = x509.load_pem_x509_certificate((certs / tls.CA_CERT).read_bytes())
    cert = leaf(certs)
    cert.verify_directly_issued_by(ca)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    out = subprocess.run(["openssl", "verify", "-CAfile", str(certs / tls.CA_CERT),
                          str(certs / tls.CERT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith(": OK")


def _handshake(certs: Path, server_hostname: str) -> None:
    """A real TLS handshake in memory: server with tls.crt/tls.key, client trusting ca.crt."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certs / tls.CERT, certs / tls.KEY)
    client_ctx = ssl.create_default_context(cafile=str(certs / tls.CA_CERT))
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, end in (("client", client), ("server", server)):
            if done[name]:
                continue
            try:
                end.do_handshake()
                done[name] = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


@pytest.mark.parametrize("host", ["api.example.com", "localhost", "127.0.0.1", "::1"])
def test_a_tls_client_trusting_ca_crt_accepts_the_certificate(certs: Path, host: str) -> None:
    _handshake(certs, host)


def test_a_tls_client_rejects_a_name_not_on_the_certificate(certs: Path) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(certs, "other.example.com")


def test_validity_and_expiry_warning(tmp_path: Path) -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    tls.generate(tmp_path, "localhost", now=now)
    info = tls.inspect(tmp_path, now=now)
    assert info.days_left == tls.LEAF_DAYS and not info.expiring
    late = tls.inspect(tmp_path, now=now + dt.timedelta(days=tls.LEAF_DAYS - 10))
    assert late.expiring


def test_missing_or_corrupt_certificate_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(SecretsError, match="does not exist"):
        tls.inspect(tmp_path)
    (tmp_path / tls.CERT).write_text("not a certificate")
    with pytest.raises(SecretsError, match="not a PEM certificate") as info:
        tls.inspect(tmp_path)
    assert "init --force" in info.value.hint
