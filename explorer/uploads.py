"""Uploaded tables, validated and kept in the cache by content hash."""

from __future__ import annotations

from pathlib import Path

from explorer.cost import format_bytes
from influence_core.cache import cache_dir
from influence_core.errors import DataError, InfluenceError

# ------------------------------------------------------------------------------------------- uploads
MAX_UPLOAD_BYTES = 50 * 1024 * 1024


def save_upload(data: bytes, filename: str) -> Path:
    """Keep an uploaded table under the cache by content hash (so a link and a restart find it again).

    Validates it first: size, a known extension, readable as a table with at least one row.
    """
    from influence_core.sources.data import read_table

    if len(data) > MAX_UPLOAD_BYTES:
        raise DataError(f"{filename} is {format_bytes(len(data))}; the limit is {format_bytes(MAX_UPLOAD_BYTES)}")
    suffixes = "".join(Path(filename).suffixes[-2:]).lower()
    digest = _sha(data)[:16]
    path = cache_dir("uploads") / f"{digest}{suffixes}"
    if not path.is_file():
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        try:
            table = read_table(str(tmp), filename=filename)
        except InfluenceError:
            tmp.unlink(missing_ok=True)
            raise
        if len(table) == 0:
            tmp.unlink(missing_ok=True)
            raise DataError(f"{filename} has no rows")
        tmp.replace(path)
    return path


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def upload_path(token: str) -> Path | None:
    """The saved upload named by ``token`` (its file name in the cache), or None if it is gone."""
    name = Path(token).name
    path = cache_dir("uploads") / name
    return path if name and path.is_file() else None
