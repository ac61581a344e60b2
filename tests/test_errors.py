"""One exception hierarchy: every exception class of zerok is defined in zerok/errors.py."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import zerok
from zerok import errors

SRC = Path(zerok.__file__).resolve().parent


def _exception_classes_defined_outside_errors() -> list[str]:
    found: list[str] = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "errors.py" and path.parent == SRC:
            continue
        module = ".".join(("zerok", *path.relative_to(SRC).with_suffix("").parts))
        module = module.removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if not isinstance(node, ast.ClassDef):
                continue
            cls = getattr(importlib.import_module(module), node.name, None)
            if inspect.isclass(cls) and issubclass(cls, BaseException):
                found.append(f"{module}.{node.name}")
    return found


def test_every_exception_is_defined_in_errors() -> None:
    assert _exception_classes_defined_outside_errors() == []


def test_every_exception_derives_from_sync_error() -> None:
    for name, cls in vars(errors).items():
        if inspect.isclass(cls) and issubclass(cls, BaseException):
            assert issubclass(cls, errors.SyncError), name


def test_local_and_remote_protocol_errors_are_told_apart() -> None:
    assert issubclass(errors.LocalProtocolError, errors.ProtocolError)
    assert issubclass(errors.RemoteProtocolError, errors.ProtocolError)
    assert not issubclass(errors.LocalProtocolError, errors.RemoteProtocolError)
    assert not issubclass(errors.RemoteProtocolError, errors.LocalProtocolError)
    assert issubclass(errors.HandshakeTimeoutError, errors.RemoteProtocolError)


def test_public_packages_reexport_the_same_classes() -> None:
    from zerok import client  # noqa: PLC0415
    from zerok.relay import storage  # noqa: PLC0415

    assert client.StateError is errors.StateError
    assert client.InviteError is errors.InviteError
    assert client.NotConnectedError is errors.NotConnectedError
    assert storage.StorageError is errors.StorageError
