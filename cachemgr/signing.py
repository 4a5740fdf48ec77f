"""Ed25519 signatures in OpenSSH's SSHSIG format (``ssh-keygen -Y sign`` / ``-Y verify``).

Nothing is invented here: the armored signature is exactly what ``ssh-keygen -Y sign -n
cachemgr-bundle`` writes (see OpenSSH's PROTOCOL.sshsig), keys are OpenSSH key files, so a
bundle manifest can be checked with the standard tool::

    echo "cachemgr ssh-ed25519 AAAA..." > allowed_signers
    ssh-keygen -Y verify -f allowed_signers -I cachemgr -n cachemgr-bundle \\
        -s manifest.json.sig < manifest.json

The ``cryptography`` package does the ed25519 arithmetic; it is imported on first use.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from cachemgr.errors import ConfigError, SignatureError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

NAMESPACE = "cachemgr-bundle"
KEY_TYPE = "ssh-ed25519"
_MAGIC = b"SSHSIG"
_VERSION = 1
_HASH = "sha512"
_BEGIN = "-----BEGIN SSH SIGNATURE-----"
_END = "-----END SSH SIGNATURE-----"


# -- SSH wire encoding -------------------------------------------------------------------
def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("short data")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint32(self) -> int:
        value: int = struct.unpack(">I", self.take(4))[0]
        return value

    def string(self) -> bytes:
        return self.take(self.uint32())

    def done(self) -> bool:
        return self.pos == len(self.data)


def _key_blob(raw_public: bytes) -> bytes:
    return _string(KEY_TYPE.encode()) + _string(raw_public)


def _raw_from_blob(blob: bytes) -> bytes:
    r = _Reader(blob)
    kind = r.string()
    raw = r.string()
    if kind != KEY_TYPE.encode() or len(raw) != 32 or not r.done():
        raise ValueError(f"not an {KEY_TYPE} key")
    return raw


# -- keys --------------------------------------------------------------------------------
def key_line(blob: bytes) -> str:
    return f"{KEY_TYPE} {base64.b64encode(blob).decode()}"


def fingerprint(line: str) -> str:
    """``SHA256:...``, as ``ssh-keygen -l`` prints it."""
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def parse_key_line(text: str, where: str) -> str:
    """The normalized ``ssh-ed25519 BASE64`` of an OpenSSH public key line (comment dropped)."""
    parts = text.split()
    try:
        if len(parts) < 2 or parts[0] != KEY_TYPE:
            raise ValueError(f"not an {KEY_TYPE} public key")
        _raw_from_blob(base64.b64decode(parts[1], validate=True))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}; give an OpenSSH ed25519 public key "
                          "(a cachemgr keygen .pub file or its 'ssh-ed25519 AAAA...' line)") from None
    return f"{parts[0]} {parts[1]}"


def read_public_keys(item: str, where: str) -> list[str]:
    """Keys given literally (``ssh-ed25519 AAAA...``) or as a file of one key per line."""
    if item.startswith(KEY_TYPE + " "):
        return [parse_key_line(item, where)]
    path = Path(item).expanduser()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read public key file {path} ({exc.strerror}); fix the path") from None
    lines = [x for x in text.splitlines() if x.strip() and not x.lstrip().startswith("#")]
    if not lines:
        raise ConfigError(f"{where}: {path} holds no public key")
    return [parse_key_line(x, f"{where}: {path}") for x in lines]


def generate_keypair(path: Path, comment: str = "cachemgr") -> str:
    """Write an unencrypted OpenSSH ed25519 key to ``path`` (0600) and ``path.pub``; return the pub line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pub_path = Path(f"{path}.pub")
    for p in (path, pub_path):
        if p.exists():
            raise ConfigError(f"{p} already exists; choose another path or remove it first")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    line = key_line(_key_blob(raw))
    _write_new(path, private, 0o600)
    _write_new(pub_path, f"{line} {comment}\n".encode(), 0o644)
    return line


def _write_new(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.link(tmp, path)  # refuses to replace a key that appeared meanwhile
    except FileExistsError:
        raise ConfigError(f"{path} already exists; choose another path") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read signing key {path} ({exc.strerror}); run cachemgr keygen") from None
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an unencrypted OpenSSH private key ({exc}); "
                          "make one with cachemgr keygen") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an ed25519 key; make one with cachemgr keygen")
    return key


def public_line_of(key: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key_line(_key_blob(raw))


# -- SSHSIG ------------------------------------------------------------------------------
def _signed_data(message: bytes) -> bytes:
    return (_MAGIC + _string(NAMESPACE.encode()) + _string(b"") + _string(_HASH.encode())
            + _string(hashlib.sha512(message).digest()))


def sign(message: bytes, key: Ed25519PrivateKey) -> bytes:
    """The armored SSHSIG signature of ``message`` (namespace ``cachemgr-bundle``)."""
    blob = base64.b64decode(public_line_of(key).split()[1])
    sig = key.sign(_signed_data(message))
    body = (_MAGIC + struct.pack(">I", _VERSION) + _string(blob) + _string(NAMESPACE.encode())
            + _string(b"") + _string(_HASH.encode()) + _string(_string(KEY_TYPE.encode()) + _string(sig)))
    text = base64.b64encode(body).decode()
    lines = [text[i:i + 70] for i in range(0, len(text), 70)]
    return ("\n".join([_BEGIN, *lines, _END]) + "\n").encode()


def verify(message: bytes, armored: bytes, where: str) -> str:
    """Check the SSHSIG ``armored`` over ``message``; return the signer's public key line."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        text = armored.decode("ascii").strip().splitlines()
        if not text or text[0].strip() != _BEGIN or text[-1].strip() != _END:
            raise ValueError("no SSH SIGNATURE armor")
        r = _Reader(base64.b64decode("".join(x.strip() for x in text[1:-1]), validate=True))
        if r.take(6) != _MAGIC or r.uint32() != _VERSION:
            raise ValueError("not an SSHSIG version 1 signature")
        blob, namespace, _reserved, hash_alg, sig_blob = (r.string() for _ in range(5))
        if not r.done():
            raise ValueError("trailing data")
        if namespace != NAMESPACE.encode():
            raise ValueError(f"namespace is {namespace.decode(errors='replace')!r}, not {NAMESPACE!r}")
        if hash_alg not in (b"sha512", b"sha256"):
            raise ValueError(f"unsupported hash {hash_alg.decode(errors='replace')!r}")
        raw = _raw_from_blob(blob)
        s = _Reader(sig_blob)
        if s.string() != KEY_TYPE.encode():
            raise ValueError(f"not an {KEY_TYPE} signature")
        sig = s.string()
    except (ValueError, UnicodeDecodeError) as exc:
        raise SignatureError(f"{where}: the signature is malformed ({exc}); the bundle was damaged "
                             "or tampered with; export it again") from None
    digest = hashlib.new(hash_alg.decode(), message).digest()
    signed = (_MAGIC + _string(NAMESPACE.encode()) + _string(_reserved) + _string(hash_alg) + _string(digest))
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(sig, signed)
    except InvalidSignature:
        raise SignatureError(f"{where}: the signature does not match the bundle manifest; the bundle "
                             "was tampered with or damaged; export it again") from None
    return key_line(blob)
