"""Where `hf:` sources live in the cache volume: huggingface_hub's own cache layout. Pure.

The volume (names.HF_CACHE_VOLUME) is mounted at MOUNT; the fetch runs huggingface_hub with
HF_HOME=MOUNT, so the files are at MOUNT/hub/models--ORG--REPO/snapshots/COMMIT/FILE, exactly
where huggingface_hub puts them (`repo_folder_name`). Model containers get that path itself and
HF_HUB_OFFLINE=1, so a restart never reaches the network.
"""

from __future__ import annotations

from . import names

MOUNT = "/hf"  # where the cache volume is mounted, in the fetch and the model containers
HUB = "hub"  # huggingface_hub's cache folder under HF_HOME
# Written by the fetch after every file of a source was downloaded and its checksum matched:
# one small JSON file per (repository, commit, file), so a later `up` knows without network.
MARKERS = "llmstack/fetched"


def repo_folder(repo: str) -> str:
    """huggingface_hub's folder name for a model repository: models--ORG--REPO."""
    return "models--" + repo.replace("/", "--")


def snapshot(repo: str, commit: str, file: str = "") -> str:
    """The path of a fetched repository (or one file of it) relative to the volume."""
    return f"{HUB}/{repo_folder(repo)}/snapshots/{commit}/{file}".rstrip("/")


def revision_of(path: str) -> str:
    """The revision (a commit once pinned) a snapshot path names: .../snapshots/REV/..."""
    return path.split("/snapshots/", 1)[1].split("/", 1)[0]


def marker(repo: str, commit: str, file: str = "") -> str:
    """The completion marker of (repo, commit, file) relative to the volume. The fetch is
    given it with COMMIT_PLACEHOLDER for the commit it resolves ('@' is in no file name)."""
    return f"{MARKERS}/{repo_folder(repo)}/{commit}/{file or '@repository'}.json"


COMMIT_PLACEHOLDER = "{commit}"


def in_container(relative: str) -> str:
    return f"{MOUNT}/{relative}"


VOLUME = names.HF_CACHE_VOLUME
# The environment of a model container that reads the cache: never the network. HF_HUB_CACHE,
# not HF_HOME: the cache is mounted read-only, and HF_HOME also holds what a server may write
# (the modules cache of remote code, the xet cache, assets); those stay in the container.
OFFLINE_ENV = {"HF_HUB_CACHE": f"{MOUNT}/{HUB}", "HF_HUB_OFFLINE": "1"}
