"""SHA-256 verification of the known datasets against manifests shipped with the package.

A flipped bit in a compressed chunk can still decompress into a valid but absurd number, and
training would go on. So the first time a known dataset (Push-T v7 zarr, D4RL kitchen-complete-v0)
is used, every file is hashed and compared with ``dp_gym/data/manifests/<name>.sha256`` (the
``sha256sum`` format, paths relative to the dataset). A verified dataset is remembered in
``$XDG_CACHE_HOME/dp_gym/verified_datasets.json`` (default ``~/.cache``) by path and the size and
modification time of each file, so later runs only ``stat`` the files. Deliberately modified data
is accepted with ``DP_GYM_SKIP_DATA_VERIFY=1``.

Example:
    >>> from dp_gym.paths import dataset_path                         # doctest: +SKIP
    >>> verify_dataset(dataset_path("kitchen/kitchen_complete-v0.hdf5"), "kitchen_complete-v0.hdf5")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path

SKIP_ENV = "DP_GYM_SKIP_DATA_VERIFY"

# Dataset path under the data directory → manifest file in dp_gym/data/manifests.
MANIFESTS = {
    "pusht/pusht_cchi_v7_replay.zarr": "pusht_cchi_v7_replay.zarr.sha256",
    "kitchen/kitchen_complete-v0.hdf5": "kitchen_complete-v0.hdf5.sha256",
}


class DatasetIntegrityError(ValueError):
    """A known dataset's file is missing or differs from the shipped SHA-256 manifest."""


def read_manifest(name: str) -> dict[str, str]:
    """``relative path → sha256`` from a shipped manifest."""
    text = resources.files("dp_gym.data").joinpath("manifests", name).read_text()
    entries = {}
    for line in text.splitlines():
        if line.strip():
            digest, rel = line.split(maxsplit=1)
            entries[rel.lstrip("*")] = digest
    return entries


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dp_gym" / "verified_datasets.json"


def _files(dataset: Path, manifest: dict[str, str]) -> dict[str, Path]:
    # A single-file dataset's manifest has one entry: the file's own name.
    return {rel: (dataset if dataset.is_file() else dataset / rel) for rel in manifest}


def _fingerprint(files: dict[str, Path]) -> list[list]:
    return [[rel, p.stat().st_size, p.stat().st_mtime_ns] for rel, p in sorted(files.items())]


def verify_dataset(dataset: str | os.PathLike, manifest_name: str) -> bool:
    """Check every file of ``dataset`` (a file or a directory store) against the manifest.

    Returns ``True`` when the files were hashed now, ``False`` when the cache already vouched for
    them (same path, sizes and modification times) or ``$DP_GYM_SKIP_DATA_VERIFY`` is set. Raises
    :class:`DatasetIntegrityError` naming the first differing or missing file. Files not in the
    manifest (never read by dp_gym) are ignored."""
    if os.environ.get(SKIP_ENV, "") not in ("", "0"):
        return False
    dataset = Path(dataset).resolve()
    manifest = read_manifest(manifest_name)
    files = _files(dataset, manifest)
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise DatasetIntegrityError(f"{dataset}: {len(missing)} file(s) of the dataset are missing, e.g. {missing[:3]}; "
                                    "re-download or re-copy it")
    cache_file = _cache_file()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    fingerprint = _fingerprint(files)
    entry = cache.get(str(dataset))
    if entry == {"manifest": manifest_name, "files": fingerprint}:
        return False
    for rel, path in sorted(files.items()):
        if sha256_file(path) != manifest[rel]:
            raise DatasetIntegrityError(
                f"{path} does not match the SHA-256 in the shipped manifest {manifest_name}: the file is corrupt or "
                f"was modified. Re-download the dataset, or set {SKIP_ENV}=1 to use deliberately modified data")
    cache[str(dataset)] = {"manifest": manifest_name, "files": fingerprint}
    try:
        from dp_gym.checkpoint import atomic_write_json

        atomic_write_json(cache_file, cache)
    except OSError:
        pass  # a read-only home only costs re-hashing next time
    return True
