"""A lean reader for uncompressed WebDataset tar shards: the loader's hot path.

``tarfile`` spends more time parsing each 512-byte header than PIL spends decoding a
48x48 PNG, so shards are read here with plain slicing. Samples are grouped the way
WebDataset groups them (``webdataset.tariterators.tarfile_samples``): consecutive files
sharing the part of the name before the first dot of the file name form one sample,
keyed by that prefix, with the rest of the name (lower-cased) as the field. Plain ustar,
GNU long names and pax ``path`` records are understood; anything else that is not a
regular file (directories, links, global headers) is skipped. Compressed shards are
left to WebDataset.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

BLOCK = 512
_META = re.compile(r"__[^/]*__($|/)")  # WebDataset's skip_meta: __key__-style files carry no data


def tar_samples(path: Path, select: Callable[[str], bool] | None = None) -> Iterator[dict]:
    """Samples ``{"__key__": ..., field: bytes, ...}`` of a tar shard, in stored order.

    ``select(file name)`` False skips a file without reading it. A truncated or corrupt
    shard raises ``tarfile.ReadError`` (after the samples before the damage) and a file
    name repeated within one sample raises ``ValueError``, as in WebDataset.
    """
    sample: dict | None = None
    for name, data in _members(path, select):
        slash = name.rfind("/")
        dot = name.find(".", slash + 1)
        if dot <= slash + 1 or (name.startswith("__") and _META.match(name)):
            continue
        key, field = name[:dot], name[dot + 1:].lower()
        if sample is None or sample["__key__"] != key:
            if sample is not None:
                yield sample
            sample = {"__key__": key}
        if field in sample:
            raise ValueError(f"{name}: duplicate file name in tar file {path.name}")
        sample[field] = data
    if sample is not None:
        yield sample


def _members(path: Path, select: Callable[[str], bool] | None) -> Iterator[tuple[str, bytes]]:
    """(name, data) of the regular files of an uncompressed tar file."""
    with open(path, "rb", buffering=1 << 20) as f:
        long_name = None
        while True:
            header = f.read(BLOCK)
            if len(header) < BLOCK or not header.strip(b"\0"):
                if header.strip(b"\0"):
                    raise tarfile.ReadError("unexpected end of data")
                return  # end-of-archive blocks (or a file cut right after a member)
            if header[257:262] != b"ustar" and not _checksum_ok(header):
                raise tarfile.ReadError("bad tar header (corrupt or not a tar file)")
            size = _number(header[124:136])
            kind = header[156:157]
            name = long_name or _name(header)
            if kind in (b"0", b"\0", b"7") and (select is None or select(name)) or kind in (b"L", b"x"):
                data = f.read(size)
                if len(data) < size:
                    raise tarfile.ReadError("unexpected end of data")
                f.seek(-size % BLOCK, 1)
            else:
                f.seek(size + -size % BLOCK, 1)
                data = None
            if kind == b"L":  # GNU long name of the next member
                long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            elif kind == b"x":  # pax header: only its path matters here
                long_name = _pax_path(data)
            else:
                long_name = None
                if data is not None:
                    yield name, data


def _name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0]
    if header[257:263] == b"ustar\0":  # POSIX ustar has a name prefix; GNU keeps times there
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape")


def _number(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256 for large sizes
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise tarfile.ReadError("bad tar header (corrupt or not a tar file)") from None


def _checksum_ok(header: bytes) -> bool:
    try:
        stored = int(header[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
    except ValueError:
        return False
    return stored == sum(header[:148]) + 256 + sum(header[156:])


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of pax extended header data ("<length> path=<name>\\n" records)."""
    position = 0
    while position < len(data):
        space = data.find(b" ", position)
        if space < 0:
            break
        length = int(data[position:space])
        key, _, value = data[space + 1:position + length - 1].partition(b"=")
        if key == b"path":
            return value.decode("utf-8", "surrogateescape")
        position += length
    return None
