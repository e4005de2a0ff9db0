"""Where the ALFWorld game files live, unpacking the shared archives into a cache once.

The shared data folder holds ``train.tar.xz``, ``valid_seen.tar.xz``, ... each unpacking to
``json_2.1.1/<split>/...``. They are unpacked into a cache outside the repository, never into it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

GAMES_FOLDER = "json_2.1.1"
REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_alfworld_dir() -> Path:
    """Folder holding the ALFWorld archives: ``$GIGPO_SHARED/data/alfworld`` if $GIGPO_SHARED is
    set, else ``<repo>/../shared/data/alfworld``."""
    shared_root = Path(os.environ["GIGPO_SHARED"]) if "GIGPO_SHARED" in os.environ else REPO_ROOT.parent / "shared"
    return shared_root / "data" / "alfworld"


def cache_alfworld_dir() -> Path:
    """Cache the archives are unpacked into: ``$GIGPO_CACHE/alfworld`` if $GIGPO_CACHE is set,
    else ``~/.cache/gigpo/alfworld``."""
    cache_root = Path(os.environ["GIGPO_CACHE"]) if "GIGPO_CACHE" in os.environ else Path.home() / ".cache" / "gigpo"
    return cache_root / "alfworld"


def _unpack(archive: Path, cache: Path) -> None:
    """Unpack one split archive into ``cache/json_2.1.1/<split>``, atomically.

    The split folder is renamed into place only once fully extracted, so its presence is the
    "done" marker; a concurrent process that loses the race throws its copy away.
    """
    split = archive.name.removesuffix(".tar.xz")
    final = cache / GAMES_FOLDER / split
    if final.exists():
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".unpack-{split}-", dir=cache))
    # The first ALFWorld run of a machine spends minutes here, before any episode: say so.
    log.info("ALFWorld data: unpacking %s into %s (once per machine; the train split takes minutes)", archive, final)
    start = time.perf_counter()
    try:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(scratch, filter="data")
        except (tarfile.TarError, EOFError, OSError) as error:  # lzma/EOF errors of a truncated archive too
            raise ValueError(f"ALFWorld data: corrupt archive {archive} ({type(error).__name__}: {error}); "
                             "replace it with a complete copy") from error
        try:
            (scratch / GAMES_FOLDER / split).rename(final)
        except OSError:
            if not final.exists():
                raise
        log.info("ALFWorld data: %s unpacked in %.0f s", split, time.perf_counter() - start)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def alfworld_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder that contains ``json_2.1.1/<split>/`` (what ALFWorld calls $ALFWORLD_DATA).

    Order: ``data_dir`` if given; else $ALFWORLD_DATA if it holds ``json_2.1.1`` (importing
    alfworld sets $ALFWORLD_DATA to its own, usually empty, default cache, so an empty one is
    skipped); else the shared archives (see ``shared_alfworld_dir``) unpacked once into
    ``cache_alfworld_dir()``. Raises FileNotFoundError naming every path searched.
    """
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not (path / GAMES_FOLDER).is_dir():
            raise FileNotFoundError(f"ALFWorld data: {path / GAMES_FOLDER} does not exist (data_dir={data_dir!r})")
        return path
    searched = []
    if os.environ.get("ALFWORLD_DATA"):
        path = Path(os.environ["ALFWORLD_DATA"]).expanduser()
        if (path / GAMES_FOLDER).is_dir():
            return path
        searched.append(f"$ALFWORLD_DATA={path} (no {GAMES_FOLDER}/ inside)")
    shared = shared_alfworld_dir()
    archives = sorted(shared.glob("*.tar.xz"))
    if not archives:
        searched.append(f"{shared}/*.tar.xz (none found; set $GIGPO_SHARED or pass data_dir)")
        raise FileNotFoundError("ALFWorld data not found; searched: " + "; ".join(searched))
    cache = cache_alfworld_dir()
    cache.mkdir(parents=True, exist_ok=True)
    for archive in archives:
        _unpack(archive, cache)
    return cache
