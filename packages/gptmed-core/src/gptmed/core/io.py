"""Atomic file writes and sha256: a crash never leaves a half-written artifact behind.

A write goes to a temp file in the destination's folder (named ``.NAME.tmp-XXXX``), is fsynced,
and replaces the destination with ``os.replace``. Stale temp files from a killed process are
swept with :func:`sweep_temp_files`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Literal, overload

from gptmed.core.errors import GptmedError

__all__ = [
    "TEMP_MARKER",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "make_folder",
    "missing_folders",
    "remove_empty_folders",
    "sha256_bytes",
    "sha256_file",
    "sweep_temp_files",
]

TEMP_MARKER = ".tmp-"
_NEW_FILE_FLAGS = (
    os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@overload
def atomic_open(
    path: str | os.PathLike[str], mode: Literal["w"] = ..., *, overwrite: bool = ..., encoding: str = ...
) -> contextlib.AbstractContextManager[IO[str]]: ...
@overload
def atomic_open(
    path: str | os.PathLike[str], mode: Literal["wb"], *, overwrite: bool = ..., encoding: str = ...
) -> contextlib.AbstractContextManager[IO[bytes]]: ...
def atomic_open(
    path: str | os.PathLike[str], mode: str = "w", *, overwrite: bool = True, encoding: str = "utf-8"
) -> contextlib.AbstractContextManager[IO[str]] | contextlib.AbstractContextManager[IO[bytes]]:
    """Open ``path`` for writing through a temp file that replaces it only on success.

    On any exception inside the ``with`` block the temp file is removed, ``path`` is untouched, and
    the folders created for it are removed again if they are empty. With ``overwrite=False`` an existing ``path`` raises ``FileExistsError`` before
    anything is written. Text mode writes ``\\n`` line endings on every platform.
    """
    return _atomic_open(Path(path), mode, overwrite, encoding)  # type: ignore[return-value]


@contextlib.contextmanager
def _atomic_open(path: Path, mode: str, overwrite: bool, encoding: str) -> Iterator[IO[str] | IO[bytes]]:
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    folder = path.parent if str(path.parent) else Path(".")
    made = missing_folders(folder)
    tmp_name: str | None = None
    try:
        try:
            make_folder(folder, "the output folder")
            while tmp_name is None:
                # The name is bound before the file exists: a signal (Ctrl-C, SIGTERM under
                # cli_errors) that lands at any point after the file's creation still finds it in
                # the except below. (With mkstemp, one landing before mkstemp returned left it.)
                tmp_name = str(folder / f".{path.name}{TEMP_MARKER}{secrets.token_hex(6)}")
                try:
                    fd = os.open(tmp_name, _NEW_FILE_FLAGS, 0o600)
                except FileExistsError:  # another writer's temp file: never ours to remove
                    tmp_name = None
                except FileNotFoundError:  # another writer's failed write removed the folder it had made
                    tmp_name = None
                    folder.mkdir(parents=True, exist_ok=True)
        except PermissionError:
            raise GptmedError(
                f"cannot write {path}: permission denied in {folder}", hint="choose a folder you can write to"
            ) from None
        if mode == "w":
            fh: IO[str] | IO[bytes] = os.fdopen(fd, "w", encoding=encoding, newline="\n")
        else:
            fh = os.fdopen(fd, "wb")
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
        _fsync_dir(folder)
    except BaseException:
        if tmp_name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
        remove_empty_folders(made)
        raise


def make_folder(folder: str | os.PathLike[str], what: str = "folder") -> Path:
    """``mkdir -p folder`` for an output, with the one-line errors a user can act on: a file where a
    folder must go is named (not ``File exists: x``), and so is a folder that is not writable."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
        raise GptmedError(
            f"cannot create {what} {folder}: {blocker} is a file", hint="choose another path"
        ) from None
    except PermissionError:
        parent = next((p for p in folder.parents if p.exists()), folder)
        raise GptmedError(
            f"cannot create {what} {folder}: permission denied in {parent}",
            hint="choose a folder you can write to",
        ) from None
    return folder


def missing_folders(folder: str | os.PathLike[str]) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first: what a
    ``mkdir -p`` is about to create, for :func:`remove_empty_folders` to take back."""
    folder = Path(folder)
    return [p for p in (folder, *folder.parents) if not p.exists()]


def remove_empty_folders(made: list[Path]) -> None:
    """Remove the folders of :func:`missing_folders` (deepest first) as long as nothing else
    landed in them: a failed or finished run leaves no empty folder it created."""
    for created in made:
        try:
            created.rmdir()
        except OSError:
            break


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb", overwrite=overwrite) as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, overwrite: bool = True) -> None:
    """Write ``text`` (UTF-8, ``\\n`` newlines) to ``path`` atomically."""
    with atomic_open(path, "w", overwrite=overwrite) as fh:
        fh.write(text)


def sweep_temp_files(folder: str | os.PathLike[str], name: str | None = None) -> list[Path]:
    """Remove temp files left by killed writers in ``folder`` (for ``name`` only, if given)."""
    removed: list[Path] = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    prefix = f".{name}{TEMP_MARKER}" if name else "."
    for entry in root.iterdir():
        if entry.name.startswith(prefix) and TEMP_MARKER in entry.name and entry.is_file():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
