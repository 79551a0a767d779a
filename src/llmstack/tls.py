"""A local CA and a server certificate with SANs (cryptography), and expiry checks.

The CA exists only to sign one server certificate: its key is used once, in memory, and never
written to disk, and NameConstraints limit it to the stack's own names, so trusting ca.crt
cannot let anyone (even with the files in certs/) vouch for another site.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import SecretsError
from .fsutil import write_atomic

CA_CERT, CERT, KEY = "ca.crt", "tls.crt", "tls.key"
# The CA key earlier versions kept on disk; no longer made or used. `init --force` moves a
# leftover one into a 0600 backup; doctor and `up` check its mode while it exists.
LEGACY_CA_KEY = "ca.key"
LEAF_DAYS = 397  # the longest validity browsers accept for a server certificate
CA_DAYS = 3650
WARN_DAYS = 30


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "llmstack"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common[:64])])


def _sans(domain: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    hosts = dict.fromkeys([domain, "localhost", "127.0.0.1", "::1"])
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _name_constraints(domain: str) -> x509.NameConstraints:
    """The names the CA may sign for: the domain, localhost and the loopback addresses.

    A DNS subtree also permits names below it (x.api.example.com), which this stack controls
    as much as the domain itself; nothing outside these subtrees verifies.
    """
    permitted: list[x509.GeneralName] = []
    for host in dict.fromkeys([domain.lower(), "localhost", "127.0.0.1", "::1"]):
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            permitted.append(x509.DNSName(host))
            continue
        permitted.append(x509.IPAddress(ipaddress.ip_network(addr)))  # /32 or /128
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def generate(directory: Path, domain: str, now: dt.datetime | None = None) -> None:
    """Write ca.crt and tls.crt (leaf + CA), and tls.key (mode 0600).

    The CA key signs the two certificates and is dropped: renewal (`init --force`) makes a new
    CA, so nothing ever needs it again and a stolen certs/ folder cannot mint certificates.
    """
    now = now or dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder()
          .subject_name(_name(f"llmstack local CA for {domain}"))
          .issuer_name(_name(f"llmstack local CA for {domain}"))
          .public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=CA_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .add_extension(_name_constraints(domain), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(_name(domain))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
            .add_extension(x509.SubjectAlternativeName(_sans(domain)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False,
                                         False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / KEY, _pem_key(key), mode=0o600)
    write_atomic(directory / CA_CERT, ca.public_bytes(pem), mode=0o644)
    write_atomic(directory / CERT, leaf.public_bytes(pem) + ca.public_bytes(pem), mode=0o644)


def private_files(directory: Path) -> list[Path]:
    """Every private key in certs/: tls.key, a legacy ca.key and backups of either."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and (p.suffix == ".key" or ".key.bak-" in p.name))


@dataclass(frozen=True)
class CertInfo:
    not_after: dt.datetime
    days_left: int
    names: list[str]

    @property
    def expiring(self) -> bool:
        return self.days_left <= WARN_DAYS


def inspect(directory: Path, now: dt.datetime | None = None) -> CertInfo:
    path = directory / CERT
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise SecretsError(f"{path} does not exist",
                           "run `llmstack init` to create a certificate") from None
    except ValueError:
        raise SecretsError(f"{path} is not a PEM certificate",
                           "run `llmstack init --force` to regenerate it (old files backed up)"
                           ) from None
    if not (directory / KEY).exists():
        raise SecretsError(f"{directory / KEY} does not exist",
                           "run `llmstack init --force` to regenerate the certificate and key")
    now = now or dt.datetime.now(dt.UTC)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = [str(n.value) for n in san]
    not_after = cert.not_valid_after_utc
    return CertInfo(not_after, (not_after - now).days, names)
