"""Guards against hostile or odd inputs, in one place.

* **Output names**: class names come from folders and from downloaded files; :func:`safe_names`
  turns them into file-name components that cannot escape the output folder, and refuses two
  names that would land on the same files. :func:`inside` checks every written path.
* **Output folders**: :func:`check_output_dir` / :func:`make_output_dir` turn "a file is in the
  way" and "cannot create" into one line naming the flag.
* **Sizes**: :func:`check_bytes` refuses an allocation a file, a config or a flag implies before it
  happens; the decoded size of one input file is bounded by ``data.max_decoded_gb``
  (:func:`decoded_limit` sets it for a block of code, :func:`check_decoded` checks against it).
* **Files**: :func:`require_regular_file`: only regular files are read (a FIFO would block forever).
* **Values**: :func:`check_float32_range`: a finite value beyond float32 would become Inf.
* **YAML**: :func:`load_yaml` refuses duplicate keys and bounds alias expansion.
* **Messages**: :func:`bounded` keeps an error line short.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import math
import os
import stat
import unicodedata
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import yaml

from volgan.errors import ConfigError, DataError, VolganError

if TYPE_CHECKING:  # numpy is imported where it is used: `volgan --help` stays instant
    import numpy as np

MAX_MESSAGE = 2000
"""Characters an error line may have; the middle of a longer one is left out."""

MAX_NAME_BYTES = 100
"""UTF-8 bytes of a sanitised name; longer names are cut and get a hash of the original (file names
may have 255 bytes, and the sample stem adds ``_seed<seed>_<index>`` and the suffix)."""

DEFAULT_MAX_DECODED_GB = 4.0
"""Default of ``data.max_decoded_gb``: the largest array one input file may decode or resample to."""

MAX_YAML_NODES = 10_000
"""YAML nodes a config may hold with every alias expanded (a full config has about 150)."""

MAX_CONFIG_BYTES = 1_000_000

_GB = 1e9
_max_decoded: ContextVar[float] = ContextVar("max_decoded_gb", default=DEFAULT_MAX_DECODED_GB)
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


# ---------------------------------------------------------------------------- messages


def bounded(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line and at most ``limit`` characters (the middle of a longer one is left out)."""
    text = " ".join(text.splitlines()) if "\n" in text or "\r" in text else text
    if len(text) <= limit:
        return text
    keep = limit - 40
    return f"{text[: keep // 2]} …({len(text) - keep} characters left out)… {text[-(keep // 2) :]}"


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for naming a user's value in a message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------- output names


def safe_name(name: str) -> str:
    """A file-name component for ``name`` that cannot leave its folder or hide itself.

    NFKC-normalised (Unicode-equivalent spellings become one name), letters, digits and ``-_.``
    kept, everything else (``/``, ``\\``, NUL, newlines, spaces, ...) mapped to ``_``; a leading dot
    becomes ``_`` (so neither ``..`` nor a hidden file), reserved Windows device names get a ``_``
    prefix, and a name longer than :data:`MAX_NAME_BYTES` is cut and ends in ``~`` and 8 hex digits
    of its hash. The exact name is always kept in the sidecar JSON, so the mapping can be reversed.
    """
    text = unicodedata.normalize("NFKC", str(name))
    out = "".join(c if (c.isalnum() and c.isprintable()) or c in "-_." else "_" for c in text) or "class"
    if out.startswith("."):
        out = "_" + out[1:]
    if out.split(".")[0].upper() in _WINDOWS_RESERVED:
        out = "_" + out
    if len(out.encode()) > MAX_NAME_BYTES:
        digest = hashlib.sha256(str(name).encode("utf-8", "surrogatepass")).hexdigest()[:8]
        cut = out.encode()[: MAX_NAME_BYTES - 9].decode("utf-8", "ignore")
        out = f"{cut}~{digest}"
    return out


def safe_names(names: Sequence[str], where: str) -> list[str]:
    """:func:`safe_name` of each name, refusing two names that map to the same component.

    Names are compared case-insensitively too, so the files stay apart on macOS and Windows.
    ``where`` starts the error message (the checkpoint or data root the names come from).
    """
    out = [safe_name(n) for n in names]
    seen: dict[str, int] = {}
    for i, safe in enumerate(out):
        j = seen.setdefault(safe.casefold(), i)
        if j != i:
            raise VolganError(
                bounded(
                    f"{where}: class names {ascii(names[j])[:60]} and {ascii(names[i])[:60]} would be written to the "
                    f"same files ({shown(out[j])}); rename one of the classes (names are mapped to letters, digits and "
                    "-_. for file names, case-insensitively)"
                )
            )
    return out


def inside(base: Path, path: Path) -> Path:
    """``path`` if it lies under ``base`` (both resolved), else a VolganError: a last line of defence."""
    root, target = os.path.realpath(base), os.path.realpath(path)
    if os.path.commonpath([root, target]) != root:
        raise VolganError(bounded(f"{path}: refused to write outside {base}"))
    return path


# ---------------------------------------------------------------------------- output folders


def check_output_dir(path: Path, flag: str) -> None:
    """Refuse an output folder that cannot be one, without creating anything.

    ``flag`` names the option in the message (``--out``, ``--run-dir``).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise VolganError(bounded(f"{path}: {flag} must be a folder, but a file of that name exists"))
    parent = path
    while not parent.exists():
        if parent.is_symlink():  # a dangling link in the way
            raise VolganError(bounded(f"{parent}: {flag}: broken symlink in the way"))
        parent = parent.parent
    if not parent.is_dir():
        raise VolganError(bounded(f"{path}: {flag}: {parent} is a file, so the folder cannot be created"))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise VolganError(bounded(f"{path}: {flag}: cannot write in {parent} (permission denied or read-only)"))


def make_output_dir(path: Path, flag: str) -> Path:
    """:func:`check_output_dir`, then create the folder; an OSError becomes one line naming it."""
    check_output_dir(path, flag)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        reason = "permission denied or read-only" if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else e
        why = getattr(reason, "strerror", None) or reason
        raise VolganError(bounded(f"{path}: {flag}: cannot create the folder ({why})")) from None
    return Path(path)


# ---------------------------------------------------------------------------- sizes


def _gb(n: float) -> str:
    return f"{n / _GB:.3g} GB"


def check_bytes(needed: float, limit: float, what: str, fix: str) -> None:
    """Refuse an allocation of ``needed`` bytes above ``limit``; ``what`` starts the message, ``fix``
    says which key or flag raises the limit."""
    if needed > limit:
        raise VolganError(bounded(f"{what} needs {_gb(needed)}, more than the limit of {_gb(limit)}; {fix}"))


@contextlib.contextmanager
def decoded_limit(gb: float) -> Iterator[None]:
    """Within the block, one input file may decode (or resample) to at most ``gb`` gigabytes."""
    token = _max_decoded.set(float(gb))
    try:
        yield
    finally:
        _max_decoded.reset(token)


def max_decoded_bytes() -> float:
    return _max_decoded.get() * _GB


def check_decoded(where: str | Path, shape: Sequence[int], itemsize: int) -> None:
    """Refuse a file whose array of ``shape`` would decode past ``data.max_decoded_gb``.

    Counted at no less than 4 bytes per voxel: every volume is turned into float32.
    """
    needed = math.prod(max(0, int(n)) for n in shape) * max(int(itemsize), 4)
    limit = max_decoded_bytes()
    if needed > limit:
        raise DataError(
            bounded(
                f"{where}: its array {tuple(int(n) for n in shape)} would decode to {_gb(needed)}, more than "
                f"data.max_decoded_gb ({_gb(limit)}); raise data.max_decoded_gb if this file is really that large"
            )
        )


def check_npz_members(path: Path) -> None:
    """Refuse an ``.npz`` one of whose arrays would decode past ``data.max_decoded_gb``.

    Only the ``.npy`` headers inside the archive are read (a few hundred bytes each), so a member that
    inflates to many gigabytes is refused before anything is inflated.
    """
    import numpy as np

    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as stream:
                    version = np.lib.format.read_magic(stream)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read(stream)
                check_decoded(f"{path}[{info.filename.removesuffix('.npy')}]", shape, np.dtype(dtype).itemsize)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        return  # not a readable archive: the reader that follows says what is wrong with it


def check_float32_range(array: np.ndarray, where: str) -> None:
    """Refuse finite values beyond float32's range (they would become Inf, then NaN, when stored)."""
    import numpy as np

    if array.dtype.kind != "f" or array.dtype.itemsize <= 4 or array.size == 0 or not np.isfinite(array).all():
        return  # NaN and Inf are named by the callers' own checks
    limit = float(np.finfo(np.float32).max)
    peak = float(np.max(np.abs(array)))
    if peak > limit:
        raise DataError(
            f"{where}: holds values up to {peak:.3g}, beyond float32's range (±{limit:.3g}); volumes are "
            "stored as float32, so rescale the data (e.g. to physical units) first"
        )


# ---------------------------------------------------------------------------- files


_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a folder",
}


def require_regular_file(path: Path, st: os.stat_result | None = None) -> os.stat_result:
    """``os.stat(path)`` if it is a regular file (after symlinks), else DataError: reading a FIFO or a
    device would block or never end."""
    st = st or os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise DataError(bounded(f"{path}: is {kind}; only regular files are read"))
    return st


# ---------------------------------------------------------------------------- YAML


class _Refused(yaml.YAMLError):
    def __init__(self, message: str, node: yaml.Node) -> None:
        super().__init__(message)
        self.message, self.mark = message, node.start_mark


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys and bounds the document with aliases expanded."""

    def compose_document(self) -> Any:
        node = super().compose_document()
        if node is not None:
            _expanded_size(node, MAX_YAML_NODES)
        return node

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise _Refused(
                        f"key {shown(key)} is given twice (lines {seen[key]} and {line}); "
                        "the first would be silently dropped, so merge them into one",
                        key_node,
                    )
                seen[key] = line
        return super().construct_mapping(node, deep=deep)  # type: ignore[arg-type]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """Nodes of the document with every alias expanded, counted without expanding anything."""
    size: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            open_.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in _children(node))
            if size[key] > limit:
                raise _Refused(
                    f"the document expands to more than {limit} values through aliases (&anchor / *alias); "
                    "a config needs a few hundred",
                    node,
                )
            continue
        if key in size:
            continue
        open_.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_:
                raise _Refused("an alias refers to a value that contains it (a recursive structure)", child)
            if id(child) not in size:
                stack.append((child, False))
    return size[id(root)]


def load_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` without its two traps: a key given twice (PyYAML keeps the last silently) and
    alias bombs (a few hundred bytes that expand to billions of values). Both, and nesting deeper
    than Python's recursion limit, are one ConfigError naming ``source``; other YAML errors pass
    through as ``yaml.YAMLError``."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # a SafeLoader subclass
    except _Refused as e:  # worded like the loader's own refusals (read_yaml), with the place
        where = f" at line {e.mark.line + 1}, column {e.mark.column + 1}" if e.mark else ""
        raise ConfigError(bounded(f"{source}: YAML syntax error{where}: {e.message}")) from None
    except RecursionError:
        raise ConfigError(f"{source}: YAML syntax error: nested too deeply (a config has three levels)") from None


def read_config_text(path: Path) -> str:
    """The text of a config file: a regular file of at most :data:`MAX_CONFIG_BYTES`, else ConfigError."""
    try:
        st = os.stat(path)
        require_regular_file(path, st)
    except DataError as e:
        raise ConfigError(str(e)) from None
    if st.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {st.st_size} bytes is not a config file (at most {MAX_CONFIG_BYTES} bytes)")
    return path.read_text()


# ---------------------------------------------------------------------------- command-line arguments


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are the CLI's one line, ``volgan: error: ...``, and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"volgan: error: {bounded(message)} (see `{self.prog} --help`)\n")


def int_arg(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {shown(text)}") from None
        if value < low or (high is not None and value > high):
            allowed = f">= {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {shown(text)}")
        return value

    parse.__name__ = "integer"
    return parse


def positive_float(text: str) -> float:
    """An argparse ``type``: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {shown(text)}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {shown(text)}")
    return value


def check_resampled(shape: Sequence[float], count: int) -> None:
    """Refuse resampling ``count`` volumes onto a grid of ``shape`` (voxels per axis, before rounding)
    past ``data.max_decoded_gb``; DataError without a path (the caller adds it)."""
    dims = tuple(math.ceil(float(n)) for n in shape)
    needed, limit = math.prod(dims) * 4 * max(1, count), max_decoded_bytes()
    if needed > limit:
        raise DataError(
            bounded(
                f"data.spacing resamples this volume to {dims} voxels ({_gb(needed)} for {count}), more than "
                f"data.max_decoded_gb ({_gb(limit)}); use a larger data.spacing, or resample: fit"
            )
        )
