"""Cryptography: Noise (classic and hybrid), device identity, group keys, blobs, proofs."""

from zerok.crypto.blob import BlobCipher
from zerok.crypto.identity import DeviceIdentity
from zerok.crypto.keys import GroupKeys, KdfParams
from zerok.crypto.membership import make_hello, verify_hello
from zerok.crypto.padding import padme

__all__ = [
    "BlobCipher",
    "DeviceIdentity",
    "GroupKeys",
    "KdfParams",
    "make_hello",
    "padme",
    "verify_hello",
]
