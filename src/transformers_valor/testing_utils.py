"""Test utilities: place a saved model folder in a Hugging Face hub cache by hand, and go offline.

huggingface_hub has no public function that imports a local folder into the cache without network access, so
`populate_hub_cache` writes the layout `from_pretrained` reads:

    <cache_dir>/models--<org>--<name>/
        refs/<revision>                 the commit id (no newline)
        snapshots/<commit>/<files>      relative symlinks into ../../blobs (or plain copies)
        blobs/<sha256>                  the file contents (when `use_blobs=True`)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from huggingface_hub import constants

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_REPO_TYPES = ("model", "dataset", "space")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hub_repo_folder_name(repo_id: str, repo_type: str = "model") -> str:
    """The cache folder name of a repository: `"org/name"` -> `"models--org--name"`."""
    if repo_type not in _REPO_TYPES:
        raise ValueError(f"`repo_type` must be one of {list(_REPO_TYPES)}, got {repo_type!r}.")
    parts = repo_id.split("/")
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise ValueError(f"`repo_id` must look like 'org/name' or 'name', got {repo_id!r}.")
    return f"{repo_type}s--" + "--".join(parts)


def populate_hub_cache(
    folder: str | os.PathLike,
    repo_id: str,
    cache_dir: str | os.PathLike,
    revision: str = "main",
    commit_hash: str | None = None,
    use_blobs: bool = True,
    repo_type: str = "model",
) -> Path:
    """
    Copy the files of `folder` (e.g. written by `save_pretrained`) into a hub cache as a snapshot of `repo_id`, so
    that `from_pretrained(repo_id)` finds them with `HF_HUB_OFFLINE=1` (or `local_files_only=True`).

    Args:
        folder (`str` or `os.PathLike`): the files to publish; sub-folders are kept.
        repo_id (`str`): `"org/name"` (or `"name"`).
        cache_dir (`str` or `os.PathLike`): the hub cache (what `HF_HUB_CACHE` points to; `$HF_HOME/hub` by default).
        revision (`str`, defaults to `"main"`): the ref written under `refs/` (skipped when it is the commit itself).
        commit_hash (`str`, *optional*): 40 hex digits naming the snapshot; by default a SHA-1 of the file names
            and contents, so the same files give the same snapshot.
        use_blobs (`bool`, defaults to `True`): store contents in `blobs/<sha256>` with relative symlinks from the
            snapshot, as huggingface_hub does; `False` (or a file system without symlinks) copies files into the
            snapshot.
        repo_type (`str`, defaults to `"model"`): `"model"`, `"dataset"` or `"space"`.

    Returns:
        `Path` of the snapshot folder (`.../snapshots/<commit>`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"No such folder to publish: {str(folder)!r}")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise ValueError(f"Folder {str(folder)!r} holds no files.")
    contents = {path.relative_to(folder).as_posix(): _sha256(path) for path in files}
    if commit_hash is None:
        listing = "\n".join(f"{name} {digest}" for name, digest in contents.items())
        commit_hash = hashlib.sha1(listing.encode()).hexdigest()
    elif not _COMMIT_RE.match(commit_hash):
        raise ValueError(f"`commit_hash` must be 40 lower-case hex digits, got {commit_hash!r}.")

    repo_dir = Path(cache_dir) / hub_repo_folder_name(repo_id, repo_type)
    snapshot = repo_dir / "snapshots" / commit_hash
    if snapshot.exists():
        shutil.rmtree(snapshot)
    for name, digest in contents.items():
        source = folder / name
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not use_blobs:
            shutil.copyfile(source, target)
            continue
        blob = repo_dir / "blobs" / digest
        if not blob.exists():
            blob.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, blob)
        try:
            os.symlink(os.path.relpath(blob, target.parent), target)
        except (
            OSError
        ):  # no symlink support (e.g. Windows without developer mode): huggingface_hub copies too
            shutil.copyfile(blob, target)
    if revision != commit_hash:
        ref = repo_dir / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit_hash)
    return snapshot


@contextlib.contextmanager
def offline_hub_cache(cache_dir: str | os.PathLike) -> Iterator[Path]:
    """
    Within the block, resolve hub ids from `cache_dir` only: set `HF_HUB_OFFLINE=1` and `HF_HUB_CACHE`, and
    patch the values huggingface_hub read from them at import time. Restores everything on exit.

    Yields:
        `Path` of the cache.
    """
    cache_dir = Path(cache_dir)
    env_names = ("HF_HUB_OFFLINE", "HF_HUB_CACHE")
    saved_env = {name: os.environ.get(name) for name in env_names}
    saved_constants = (constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_CACHE"] = str(cache_dir)
    constants.HF_HUB_OFFLINE = True
    constants.HF_HUB_CACHE = str(cache_dir)
    try:
        yield cache_dir
    finally:
        constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE = saved_constants
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
