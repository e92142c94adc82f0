"""Task images: downloaded from Label Studio (cached under MODEL_DIR/cache) and decode-checked."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from isal_core.data.images import open_image
from isal_core.errors import ImageDecodeError
from isal_core.utils.progress import track

from ..errors import DownloadError
from .client import LabelStudioAPI


def fetch_images(api: LabelStudioAPI, urls: list[str], cache_dir: Path, workers: int) -> list:
    """Download (cached) and decode-check each URL in parallel: a Path, or the DownloadError /
    ImageDecodeError that says why not, per URL, in order."""

    def fetch(url: str):
        try:
            path = api.download(url, cache_dir)
            open_image(str(path))
            return path
        except (DownloadError, ImageDecodeError) as exc:
            return exc

    if len(urls) <= 1:
        return [fetch(u) for u in urls]
    with ThreadPoolExecutor(min(workers, len(urls)), thread_name_prefix="isal-download") as pool:
        return list(track(pool.map(fetch, urls), "downloading images", total=len(urls)))


def is_key_problem(error) -> bool:
    """Label Studio itself refused the API key (not a missing or broken file, nor another host's 401/403)."""
    return isinstance(error, DownloadError) and error.status in (401, 403) and error.from_label_studio
