"""Throwaway PKI for credential tests: a CA, a server certificate, client certificates (openssl).

The control plane's own tooling uses the ``openssl`` CLI too, so no extra dependency.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Authority:
    """A certificate authority in ``directory`` that signs leaf certificates."""

    directory: Path

    @property
    def cert(self) -> Path:
        return self.directory / "ca.crt"

    @classmethod
    def create(cls, directory: Path) -> Authority:
        directory.mkdir(parents=True, exist_ok=True)
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", "/CN=dpo-test-ca",
            "-keyout", str(directory / "ca.key"), "-out", str(directory / "ca.crt"),
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        return cls(directory)

    def issue(self, name: str, subject: str, extensions: str) -> Pair:
        """A key and a certificate for ``subject`` (``/CN=.../O=...``) with ``extensions``."""
        key, csr, cert = (self.directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        ext_file = self.directory / f"{name}.ext"
        ext_file.write_text(extensions)
        _openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-subj", subject, "-keyout", str(key), "-out", str(csr),
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert),
            "-CAkey", str(self.directory / "ca.key"), "-CAcreateserial", "-days", "1",
            "-extfile", str(ext_file), "-out", str(cert),
        )  # fmt: skip
        return Pair(cert, key)

    def server(self, dns_name: str) -> Pair:
        return self.issue(
            "server",
            f"/CN={dns_name}",
            f"subjectAltName=DNS:{dns_name}\nextendedKeyUsage=serverAuth\n",
        )

    def client(self, user: str, group: str = "") -> Pair:
        subject = f"/CN={user}" + (f"/O={group}" if group else "")
        return self.issue(f"client-{user}", subject, "extendedKeyUsage=clientAuth\n")
