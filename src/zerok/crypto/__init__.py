"""Cryptography: Noise (classic and hybrid), device identity, keys, blobs, log entries, proofs."""

from zerok.crypto.blob import BlobHeader, open_blob, seal_blob
from zerok.crypto.identity import DeviceIdentity
from zerok.crypto.keys import KdfParams
from zerok.crypto.membership import make_hello, verify_hello
from zerok.crypto.padding import padme

__all__ = [
    "BlobHeader",
    "DeviceIdentity",
    "KdfParams",
    "make_hello",
    "open_blob",
    "padme",
    "seal_blob",
    "verify_hello",
]
