"""Files that a kill cannot corrupt: atomic replacement, hard-linked copies, torn-line-tolerant appends.

Every file of a run directory is written through this module. A replacement goes to a temporary
file ``.<name>.<random>.tmp`` in the same folder, is flushed to disk and renamed over the target,
so a reader sees the old file or the new one, never a mixture. Temporaries are created with mode
``0o666`` minus the umask, like any other file the user's process creates.

Fault injection (for the crash tests, see docs/reliability.md): with the environment variable
``SNN_STP_FAULT=<file name>:<phase>[:<n>[:<signal>]]`` the process sends itself ``signal``
(default KILL; INT is a Ctrl-C) at the ``n``-th write (default 1) of that file, at ``phase``
``during`` (the temporary, or half a line, is on disk, the target not yet replaced) or ``after``
(the target was replaced). This stops the real process at an exact point instead of after a
guessed delay.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .errors import RunDirectoryError


class WriteError(RunDirectoryError):
    """A file could not be written (full disk, size limit, permissions); the old version is intact."""


#: Suffix of the temporaries; :func:`remove_temporaries` deletes leftovers of a killed write.
TEMPORARY_SUFFIX = ".tmp"

_fault_counts: dict[tuple[str, str], int] = {}


def fault_point(name: str, phase: str) -> None:
    """Signal this process (SIGKILL unless told otherwise) if ``SNN_STP_FAULT`` names this write of
    ``name`` at ``phase``."""
    spec = os.environ.get("SNN_STP_FAULT")
    if not spec:
        return
    parts = spec.split(":")
    if parts[0] != name or parts[1] != phase:
        return
    key = (name, phase)
    _fault_counts[key] = _fault_counts.get(key, 0) + 1
    if _fault_counts[key] == (int(parts[2]) if len(parts) > 2 and parts[2] else 1):
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), getattr(signal, f"SIG{parts[3]}") if len(parts) > 3 else signal.SIGKILL)


def _temporary_path(folder: Path, name: str) -> Path:
    """A fresh name ``.<name>.<random>.tmp`` next to the target (what :func:`remove_temporaries` matches)."""
    return folder / f".{name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"


def _create_temporary(folder: Path, name: str) -> tuple[int, Path]:
    """A new empty file next to the target, opened for writing; the umask applies to its mode."""
    while True:
        path = _temporary_path(folder, name)
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileExistsError:
            continue


class _WriteRecorder:
    """A binary file that remembers the OSError of a failed write: torch.save turns it into an
    uninformative RuntimeError ("unexpected pos ..."), and the real cause (a full disk) is what
    the user needs to see."""

    def __init__(self, file: BinaryIO):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def __getattr__(self, name):
        return getattr(self.file, name)


def write_failure(path: Path, error: OSError) -> WriteError:
    """A one-line error for a failed write of ``path``, with the free space where it was written."""
    try:
        free = f"; {shutil.disk_usage(path.parent).free / 1e6:,.0f} MB free there"
    except OSError:
        free = ""
    return WriteError(f"could not write {path}: {error.strerror or error}{free}. The previous version of the file "
                      "is intact; free space (or fix the permissions) and run the command again")


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through ``write(binary file)`` to a temporary, fsync it, then rename it over ``path``.

    A failed write (full disk, file size limit, permissions) is a :class:`WriteError` naming
    ``path``; the old ``path`` is untouched and the temporary removed.
    """
    path = Path(path)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = _create_temporary(path.parent, path.name)
        with os.fdopen(handle, "wb") as f:
            recorder = _WriteRecorder(f)
            try:
                write(recorder)
                f.flush()
            except Exception:
                if recorder.error is not None:  # torch.save hid it; an OSError itself is caught below
                    raise write_failure(path, recorder.error) from None
                raise
            fault_point(path.name, "during")
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as error:
        raise write_failure(path, error) from None
    finally:
        if temporary is not None and temporary.exists():
            temporary.unlink(missing_ok=True)
    fault_point(path.name, "after")


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode()))


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file name next to ``path`` for a writer that wants a name, not a file object
    (h5py); renamed over ``path`` when the block ends, removed if it raises. Readers see the old
    file or the whole new one, never a part."""
    path = Path(path)
    temporary = _temporary_path(path.parent, path.name)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if missing) between processes of this
    machine: for work that two processes must not do at once, such as generating a data set. A
    no-op where the platform has no ``fcntl`` (Windows)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def link_atomic(source: str | Path, path: str | Path) -> None:
    """Make ``path`` the same file as ``source`` (a hard link; a copy where links are not supported),
    replacing ``path`` atomically. Later replacements of either name leave the other intact."""
    source, path = Path(source), Path(path)
    temporary = _temporary_path(path.parent, path.name)
    try:
        try:
            os.link(source, temporary)
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            with open(source, "rb") as original:
                write_atomic(path, lambda f: shutil.copyfileobj(original, f))
            return
        fault_point(path.name, "during")
        os.replace(temporary, path)
    except OSError as error:
        raise write_failure(path, error) from None
    finally:
        temporary.unlink(missing_ok=True)
    fault_point(path.name, "after")


def append_line(path: str | Path, line: str) -> None:
    """Append one line and fsync it. A kill mid-write can leave a torn last line, which readers skip."""
    data = (line.rstrip("\n") + "\n").encode()
    try:
        _append(Path(path), data)
    except OSError as error:
        raise write_failure(Path(path), error) from None
    fault_point(Path(path).name, "after")


def _append(path: Path, data: bytes) -> None:
    half = len(data) // 2
    with open(path, "ab") as f:
        f.write(data[:half])
        f.flush()
        fault_point(path.name, "during")  # a kill here leaves a torn line
        f.write(data[half:])
        f.flush()
        os.fsync(f.fileno())


def remove_temporaries(folder: str | Path, names: tuple[str, ...]) -> list[Path]:
    """Delete the temporaries a killed write of any of ``names`` left in ``folder``; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        if path.name.endswith(TEMPORARY_SUFFIX) and any(path.name.startswith(f".{n}.") for n in names):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


#: What a config or sweep file may be: at most this many bytes, and at most this many nodes once
#: its aliases are expanded (a real config has a few hundred; a "billion laughs" file has 10**9
#: from a few hundred bytes, and walking it would take the machine's memory and time).
MAX_YAML_BYTES, MAX_YAML_NODES = 1_000_000, 100_000


#: YAML 1.1's integers and floats without its base-60 forms: PyYAML reads ``2:4`` as 124 and
#: ``1:30.5`` as 90.5, so an N:M pattern or a time limit would arrive as a number; here they stay
#: strings (as in YAML 1.2). Otherwise PyYAML's own patterns.
_INT = r"""^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"""
_FLOAT = r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9_]+(?:[eE][-+][0-9]+)?
            |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"""


def _unique_key_loader(source: str):
    """A SafeLoader (plain values only, no base-60 numbers) that refuses a key given twice in one
    mapping (PyYAML alone keeps the last one silently)."""
    import re

    import yaml

    from .errors import ConfigError

    class UniqueKeyLoader(yaml.SafeLoader):
        pass

    numbers = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    UniqueKeyLoader.yaml_implicit_resolvers = {
        first: [(tag, pattern) for tag, pattern in resolvers if tag not in numbers]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    UniqueKeyLoader.add_implicit_resolver(numbers[0], re.compile(_INT, re.X), list("-+0123456789"))
    UniqueKeyLoader.add_implicit_resolver(numbers[1], re.compile(_FLOAT, re.X), list("-+0123456789."))

    def mapping(loader, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"{source}: key {key!r} appears twice in one mapping (lines {seen[key] + 1} and "
                                  f"{key_node.start_mark.line + 1}); keep one")
            seen[key] = key_node.start_mark.line
        return loader.construct_mapping(node, deep)

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return UniqueKeyLoader


def _expanded_nodes(node, limit: int) -> int:
    """How many nodes ``node`` stands for once every alias is written out (stops counting past
    ``limit``); a node that contains itself counts as unlimited. PyYAML shares an aliased node,
    so this is computed on the composed graph, before a Python object is built."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(item) -> int:
        key = id(item)
        if key in sizes:
            return sizes[key]
        if key in active:  # an alias inside its own anchor: infinite when expanded
            return limit + 1
        active.add(key)
        total = 1
        if isinstance(item.value, list):
            for child in item.value:
                for part in (child if isinstance(child, tuple) else (child,)):
                    total += size(part)
                    if total > limit:
                        break
                if total > limit:
                    break
        active.discard(key)
        sizes[key] = total
        return total

    return size(node)


def load_yaml_text(text: str, source: str, fix: str = "the file"):
    """Parse YAML ``text`` from ``source`` (a file name, or e.g. ``--set a.b``) into plain values.

    Refused with a one-line :class:`ConfigError` naming ``source``: a syntax error (with line and
    column), a duplicate key, more than :data:`MAX_YAML_BYTES` bytes, or aliases that expand to
    more than :data:`MAX_YAML_NODES` nodes (checked on the composed node graph, before any Python
    object is built, so an alias bomb costs milliseconds and no memory).
    """
    import yaml

    from .errors import ConfigError

    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{source} is {len(text):,} characters; a config or sweep is at most {MAX_YAML_BYTES:,}: "
                          "is it the right file?")
    loader = _unique_key_loader(source)(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise ConfigError(f"{source} is nested too deeply to be a config; fix {fix}") from None
        if node is None:
            return None
        if _expanded_nodes(node, MAX_YAML_NODES) > MAX_YAML_NODES:
            raise ConfigError(f"{source} was refused: its aliases (*name) expand to more than {MAX_YAML_NODES:,} "
                              "values (a YAML alias bomb, or an alias inside its own anchor); a config is far smaller: "
                              "write the values out or use fewer aliases")
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{source}{where}: YAML syntax error ({problem}); fix {fix}") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path):
    """Parse a YAML file with :func:`load_yaml_text`; every refusal names the file (and the line)."""
    from .errors import ConfigError

    path = Path(path)
    try:
        size = path.stat().st_size
        if size > 4 * MAX_YAML_BYTES:  # not even read: at most 4 bytes a character
            raise ConfigError(f"{path} is {size:,} bytes; a config or sweep is at most {MAX_YAML_BYTES:,} characters: "
                              "is it the right file?")
        text = path.read_text()
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not a YAML text file ({error.reason}); give a YAML config") from None
    return load_yaml_text(text, str(path))


def parse_value(raw: str, source: str):
    """A command-line value (``--set KEY=VALUE``, ``--grid KEY=V1,V2``) as YAML; an empty one is None."""
    if not raw.strip():
        return None
    return load_yaml_text(raw, source, fix="the value")
