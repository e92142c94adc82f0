"""Downloading task files, and where from: no SSRF through a task's image URL.

A task author controls `data.image`; the backend holds a token that can read the whole
Label Studio. So by default files come only from Label Studio's own origin
(LABEL_STUDIO_URL). Another host is fetched only when it is listed in
DOWNLOAD_ALLOWED_HOSTS (`host` or `host:port`, `*.example.com` for subdomains), and even
then not when it resolves to a loopback, private, link-local (169.254/16: cloud metadata)
or otherwise non-global address, unless that is Label Studio's own host. Every redirect
is checked again (a presigned-storage redirect needs its bucket host listed), and each
file is capped in size. A refusal is a per-task error; it never fails the job.

The connection goes to the address that was checked (the URL's host is resolved once and
pinned; Host header and TLS name stay the host's), so a name that resolves to a public
address for the check and to an internal one a moment later (DNS rebinding) gets nowhere.
"""
from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
from label_studio_sdk.core.api_error import ApiError

from isal_core.utils.atomic import atomic_write

from ..errors import DownloadError, DownloadRefused

MAX_REDIRECTS = 5


class DownloadPolicy:
    def __init__(self, label_studio_url: str, allowed_hosts: Sequence[str] = (), max_bytes: int = 100 << 20):
        ls = urlsplit(label_studio_url)
        self.ls_origin = (ls.scheme.lower(), ls.netloc.lower())
        self.ls_host = (ls.hostname or "").lower()
        self.allowed = [h.strip().lower() for h in allowed_hosts if h.strip()]
        self.max_bytes = max_bytes

    @classmethod
    def from_settings(cls, settings, label_studio_url: str) -> "DownloadPolicy":
        """The policy of the backend's settings (DOWNLOAD_ALLOWED_HOSTS, DOWNLOAD_MAX_MB)."""
        return cls(label_studio_url, settings.download_allowed_hosts.split(","),
                   int(settings.download_max_mb * (1 << 20)))

    def is_label_studio(self, url: str) -> bool:
        parts = urlsplit(url)
        return (parts.scheme.lower(), parts.netloc.lower()) == self.ls_origin

    def check(self, url: str) -> str | None:
        """Raise DownloadRefused unless the backend may fetch `url` (each redirect target too).

        Returns the checked address to connect to, or None for Label Studio's own host."""
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise DownloadRefused(f"{url}: only http(s) URLs are downloaded")
        if self.is_label_studio(url):
            return None
        host, netloc = parts.hostname.lower(), parts.netloc.lower().rsplit("@", 1)[-1]
        if not any(self._matches(rule, host, netloc) for rule in self.allowed):
            raise DownloadRefused(f"{url}: {netloc} is not Label Studio ({self.ls_origin[1]}) and not in "
                                  "DOWNLOAD_ALLOWED_HOSTS; add it there to download task files from it")
        if host == self.ls_host:
            return None  # Label Studio's own machine, another port: allowed by the list
        addresses = _addresses(host, parts.port or (443 if parts.scheme.lower() == "https" else 80))
        for address in addresses:
            if not address.is_global:
                raise DownloadRefused(f"{url}: {host} resolves to {address}, a loopback, private, link-local or "
                                      "reserved address; only Label Studio's own host may be one")
        if not addresses:
            raise DownloadRefused(f"cannot resolve {host}: no address")
        return str(addresses[0])

    @staticmethod
    def _matches(rule: str, host: str, netloc: str) -> bool:
        if rule.startswith("*."):
            return host.endswith(rule[1:])
        return rule in (host, netloc)


def _addresses(host: str, port: int) -> list:
    try:
        return [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in socket.getaddrinfo(host, port)]
    except (socket.gaierror, UnicodeError) as exc:
        raise DownloadRefused(f"cannot resolve {host}: {exc}") from None


def fetch_file(http: httpx.Client, url: str, dest: Path, policy: DownloadPolicy, auth_headers: Callable[[], dict],
               timeout: float, verify: Callable[[str], object] | None = None) -> Path:
    """GET `url` into `dest` (atomically; with `verify`, only a file it accepts), checking the policy on every
    hop; auth headers go only to Label Studio's origin. DownloadError says why not (status None: refused,
    timeout, network); what `verify` raises passes through."""
    current = url
    try:
        for _ in range(MAX_REDIRECTS + 1):
            try:
                pinned = policy.check(current)  # every hop: a redirect may point anywhere
            except DownloadRefused as exc:
                raise DownloadError(current, None, f"refused: {exc}") from None
            ours = policy.is_label_studio(current)
            target, headers, extensions = current, auth_headers() if ours else {}, {}
            if pinned is not None:  # connect to the address that was checked, not to a fresh lookup
                target, headers, extensions = _pin(current, pinned)
            with http.stream("GET", target, headers=headers, extensions=extensions, follow_redirects=False) as r:
                if r.is_redirect and "location" in r.headers:
                    current = urljoin(current, r.headers["location"])
                    continue
                if r.status_code != 200:
                    raise DownloadError(current, r.status_code, r.reason_phrase, from_label_studio=ours)
                _save(r, dest, current, policy.max_bytes, verify)
                return dest
        raise DownloadError(url, None, f"more than {MAX_REDIRECTS} redirects")
    except httpx.TimeoutException as e:
        raise DownloadError(current, None, f"timed out after {timeout} s: {type(e).__name__}") from e
    except httpx.HTTPError as e:
        raise DownloadError(current, None, f"{type(e).__name__}: {e}") from e
    except ApiError as e:  # a personal access token could not be exchanged
        raise DownloadError(current, e.status_code, f"token refresh failed: {e.body}", from_label_studio=True) from e


def _pin(url: str, address: str) -> tuple[str, dict, dict]:
    """(URL with the host replaced by `address`, Host header, TLS server name) for one request."""
    parts = urlsplit(url)
    host = f"[{address}]" if ":" in address else address
    netloc = host + (f":{parts.port}" if parts.port else "")
    host_header = parts.netloc.rsplit("@", 1)[-1]
    return (parts._replace(netloc=netloc).geturl(), {"Host": host_header},
            {"sni_hostname": parts.hostname} if parts.scheme.lower() == "https" else {})


def _save(response: httpx.Response, dest: Path, url: str, cap: int, verify=None) -> None:
    """Stream the body to `dest` atomically, refusing more than `cap` bytes (nothing partial is left)."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise DownloadError(url, None, f"refused: {int(declared)} bytes is over the {cap}-byte cap (DOWNLOAD_MAX_MB)")
    size = 0
    with atomic_write(dest, "wb", verify=verify) as f:
        for block in response.iter_bytes(1 << 16):
            size += len(block)
            if size > cap:
                raise DownloadError(url, None, f"refused: more than the {cap}-byte cap (DOWNLOAD_MAX_MB)")
            f.write(block)
