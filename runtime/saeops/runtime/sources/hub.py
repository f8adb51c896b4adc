"""The Hugging Face Hub (or a mirror): settings from the environment, model snapshots, errors.

Settings are read when a run starts, not when a library is imported: `HF_ENDPOINT` (a mirror),
`HF_HUB_OFFLINE` (cache only) and `HF_TOKEN` (the operator mounts `model.secretRef` there).
`huggingface_hub` and `datasets` read the first two once, at import; `sync_libraries()` brings
their copies up to date so a process that set them later (a notebook, a test) is obeyed too.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from saeops.runtime.sources.cache import download_lock, hub_cache_dir
from saeops.runtime.sources.location import SourceError

log = logging.getLogger("saeops.sources")
DEFAULT_ENDPOINT = "https://huggingface.co"
COMMIT = re.compile(r"^[0-9a-f]{40}$")
_TRUE = {"1", "true", "yes", "on"}

# What a model needs: config, weights, tokenizer. Other frameworks' weights and exports are
# skipped; `.bin` weights are fetched only when the repo has no safetensors.
SKIP = ("*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.ot", "*.tflite", "*.mlmodel", "*.gguf",
        "onnx/*", "openvino/*", "coreml/*", "original/*", "tf_model*", "flax_model*", "rust_model*")
TORCH_PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt")


@dataclass(frozen=True)
class HubSettings:
    """The hub a run talks to, read from the environment now."""

    endpoint: str
    offline: bool
    token: str | None

    @staticmethod
    def from_env() -> HubSettings:
        endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        offline = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").lower() in _TRUE
        token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None
        return HubSettings(endpoint, offline, token)


def sync_libraries(settings: HubSettings) -> None:
    """Point the already imported `huggingface_hub` and `datasets` at `settings`."""
    from huggingface_hub import constants

    for name in ("httpx", "httpx2"):  # one INFO line per HTTP request otherwise
        logging.getLogger(name).setLevel(logging.WARNING)

    constants.ENDPOINT = settings.endpoint
    constants.HF_HUB_OFFLINE = settings.offline
    constants.HUGGINGFACE_CO_URL_TEMPLATE = settings.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    try:
        from datasets import config
    except ImportError:
        return
    config.HF_ENDPOINT = settings.endpoint
    config.HUB_DATASETS_URL = settings.endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"
    config.HUB_DATASETS_HFFS_URL = "hf://datasets/{repo_id}@{revision}/{path}"
    config.HF_HUB_OFFLINE = config.HF_DATASETS_OFFLINE = settings.offline


def hub_error(e: BaseException, what: str, field: str, settings: HubSettings, revision: str | None) -> SourceError:
    """One line for a failed hub call: which repo, what went wrong, the fix."""
    from huggingface_hub import errors

    rev = revision or "main"
    token_hint = "set model.secretRef (HF_TOKEN) to a token that can read it"
    if isinstance(e, errors.GatedRepoError):
        return SourceError(f"{field}: {what} is gated: accept its conditions on {settings.endpoint}/{what} "
                           f"with the account whose token is used, and {token_hint}")
    if isinstance(e, errors.RevisionNotFoundError):
        return SourceError(f"{field}: revision {rev!r} of {what} does not exist on {settings.endpoint}; "
                           "use a branch, tag or commit hash of the repo")
    if isinstance(e, errors.RepositoryNotFoundError):
        why = "the token cannot read it" if settings.token else "or is private/gated and no token is set"
        return SourceError(f"{field}: {what} was not found on {settings.endpoint} ({why}); check the name, "
                           f"or {token_hint}")
    if isinstance(e, errors.LocalEntryNotFoundError):  # the hub could not be reached, no cached copy
        return SourceError(f"{field}: cannot reach {settings.endpoint} for {what} and it is not cached; set "
                           "HF_ENDPOINT to a reachable mirror, or HF_HUB_OFFLINE=1 with the files in the cache")
    if isinstance(e, errors.EntryNotFoundError):
        return SourceError(f"{field}: a file of {what} (revision {rev}) is missing on {settings.endpoint}: "
                           f"{_first_line(e)}")
    if isinstance(e, errors.HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 401:
            return SourceError(f"{field}: {settings.endpoint} rejected the token (HF_TOKEN) for {what}; "
                               "replace the token in model.secretRef's Secret")
        if status == 403:
            return SourceError(f"{field}: the token may not read {what} on {settings.endpoint}; {token_hint}")
        return SourceError(f"{field}: {settings.endpoint} answered {status} for {what}; retry later, or set "
                           "HF_ENDPOINT to a mirror")
    if isinstance(e, errors.OfflineModeIsEnabled):
        return SourceError(f"{field}: {what} needs the hub but HF_HUB_OFFLINE=1; unset it, or fill the cache")
    name = type(e).__name__
    if "Connect" in name or "Timeout" in name or isinstance(e, OSError | ConnectionError):
        return SourceError(f"{field}: cannot reach {settings.endpoint} for {what} ({name}); set HF_ENDPOINT "
                           "to a reachable mirror, or HF_HUB_OFFLINE=1 with the files in the cache")
    return SourceError(f"{field}: fetching {what} from {settings.endpoint} failed: {name}: {_first_line(e)}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def cached_snapshot(cache: Path, repo_id: str, revision: str | None, repo_type: str = "model") -> tuple[Path, str] | None:
    """The snapshot folder and commit of `repo_id@revision` in the hub cache layout, if present
    (`<cache>/models--ORG--NAME/refs/<revision>` holds the commit; `snapshots/<commit>` the files)."""
    from huggingface_hub.file_download import repo_folder_name

    folder = cache / repo_folder_name(repo_id=repo_id, repo_type=repo_type)
    rev = revision or "main"
    commit = rev if COMMIT.match(rev) else None
    if commit is None:
        ref = folder / "refs" / rev
        if not ref.is_file():
            return None
        commit = ref.read_text().strip()
    snap = folder / "snapshots" / commit
    return (snap, commit) if snap.is_dir() and any(snap.iterdir()) else None


def _patterns(files: list[str]) -> list[str]:
    """Ignore patterns for a repo holding `files`."""
    if any(f.endswith(".safetensors") for f in files):
        return [*SKIP, *TORCH_PICKLES]
    return list(SKIP)


def fetch_model_snapshot(repo_id: str, revision: str | None, cache_dir: str | None,
                         field: str = "spec.model.path") -> tuple[Path, str]:
    """Download (or find in the cache) a model repo's files; returns (local folder, commit hash).

    One process per node downloads under a file lock; the others wait and then find the files.
    With `HF_HUB_OFFLINE=1` only the cache is read.
    """
    settings = HubSettings.from_env()
    cache = hub_cache_dir(cache_dir)
    what = f"hf://{repo_id}"
    if settings.offline:
        hit = cached_snapshot(cache, repo_id, revision)
        if hit is None:
            raise SourceError(
                f"{field}: {what} (revision {revision or 'main'}) is not in the hub cache {cache} and "
                "HF_HUB_OFFLINE=1; download it once with network access (e.g. `saeops hooks`), or copy a "
                "Hugging Face cache there (model.cacheDir / SAEOPS_CACHE_DIR / HF_HUB_CACHE)"
            )
        return hit
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.file_download import repo_folder_name

    sync_libraries(settings)
    with download_lock(cache / repo_folder_name(repo_id=repo_id, repo_type="model"), what):
        try:
            api = HfApi(endpoint=settings.endpoint, token=settings.token)
            info = api.model_info(repo_id, revision=revision)
            files = [s.rfilename for s in info.siblings or []]
            path = snapshot_download(
                repo_id, revision=revision, cache_dir=str(cache), endpoint=settings.endpoint,
                token=settings.token, ignore_patterns=_patterns(files),
            )
        except SourceError:
            raise
        except Exception as e:
            raise hub_error(e, what, field, settings, revision) from None
    folder = Path(path)
    log.info("model %s at commit %s in %s", what, folder.name, folder)
    return folder, folder.name
