"""A folder made read-only for the code under test, as ``chmod a-w`` makes it for a user who is not
root (tests may run as root, whom chmod does not stop): nothing can be created, renamed or removed in
it, while files already there stay writable, as their own permissions allow."""

from __future__ import annotations

import builtins
import errno
import io
import os
from pathlib import Path
from typing import Any

import pytest


def make_read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Refuse, with EPERM, every new entry (and every rename or removal) inside ``folder``."""
    root = os.path.realpath(folder)

    def inside(path: Any) -> bool:
        if isinstance(path, int):
            return False
        where = os.path.realpath(os.path.dirname(os.path.abspath(os.fspath(path))))
        return where == root or where.startswith(root + os.sep)

    def refuse(path: Any) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted", os.fspath(path))

    real_open, real_os_open = builtins.open, os.open
    real_mkdir, real_replace, real_rename, real_unlink = os.mkdir, os.replace, os.rename, os.unlink

    def guarded_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if any(c in mode for c in "wax+") and inside(file) and not os.path.exists(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_CREAT and inside(path) and not os.path.exists(path):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if inside(path) and not os.path.exists(path):
            refuse(path)
        real_mkdir(path, *args, **kwargs)

    def guarded_replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if inside(src) or inside(dst):
            refuse(dst)
        real_replace(src, dst, *args, **kwargs)

    def guarded_rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if inside(src) or inside(dst):
            refuse(dst)
        real_rename(src, dst, *args, **kwargs)

    def guarded_unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        if inside(path):
            refuse(path)
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)
    monkeypatch.setattr(os, "replace", guarded_replace)
    monkeypatch.setattr(os, "rename", guarded_rename)
    monkeypatch.setattr(os, "unlink", guarded_unlink)
