"""No SSRF through a task's image URL: Label Studio's origin by default, an allow-list for other
hosts, no private or link-local addresses, redirects checked again, a size cap, and a bomb guard.
Two local HTTP servers stand in for "Label Studio" and "another host"."""
from __future__ import annotations

import functools
import http.server
import threading

import pytest
from PIL import Image

from backend.errors import DownloadError
from backend.job.tasks import fetch_images, is_key_problem
from backend.labelstudio.client import LabelStudioAPI
from backend.labelstudio.download_policy import DownloadPolicy, DownloadRefused
from isal_core.data.images import open_image
from isal_core.errors import ImageDecodeError


class Handler(http.server.SimpleHTTPRequestHandler):
    redirects: dict[str, str] = {}

    def do_GET(self):
        target = self.redirects.get(self.path)
        if target:
            self.send_response(302)
            self.send_header("Location", target)
            self.end_headers()
            return
        if self.path == "/forbidden.png":
            self.send_error(403)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


def serve(root, redirects=None):
    handler = type("H", (Handler,), {"redirects": redirects or {}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def two_hosts(tmp_path):
    ls_root, other_root = tmp_path / "ls", tmp_path / "other"
    for root in (ls_root, other_root):
        root.mkdir()
        Image.new("RGB", (8, 8), (10, 200, 10)).save(root / "a.png")
    other, other_url = serve(other_root)
    ls, ls_url = serve(ls_root, {"/to-other": f"{other_url}/a.png", "/to-metadata": "http://169.254.169.254/x"})
    (ls_root / "big.bin").write_bytes(b"x" * 5000)
    yield ls_url, other_url
    for server in (ls, other):
        server.shutdown()
        server.server_close()


def test_policy_rules():
    policy = DownloadPolicy("http://ls.example:8080", ["cdn.example.org", "*.bucket.example.net", "localhost",
                                                       "169.254.169.254"])
    policy.check("http://ls.example:8080/data/upload/1/a.jpg")  # Label Studio's origin
    with pytest.raises(DownloadRefused, match="not in DOWNLOAD_ALLOWED_HOSTS"):
        policy.check("http://elsewhere.example.org/a.jpg")
    with pytest.raises(DownloadRefused, match="not in DOWNLOAD_ALLOWED_HOSTS"):
        policy.check("http://ls.example:9999/a.jpg")  # Label Studio's host, another port: not listed
    with pytest.raises(DownloadRefused, match="loopback, private, link-local"):
        policy.check("http://localhost/a.jpg")  # listed, but resolves to 127.0.0.1
    with pytest.raises(DownloadRefused, match="169.254.169.254"):
        policy.check("http://169.254.169.254/latest/meta-data/")  # cloud metadata, even when listed
    with pytest.raises(DownloadRefused, match="only http"):
        policy.check("file:///etc/passwd")
    assert DownloadPolicy._matches("*.bucket.example.net", "eu.bucket.example.net", "eu.bucket.example.net")
    assert not DownloadPolicy._matches("*.bucket.example.net", "bucket.example.net.evil.io", "x")


def test_downloads_follow_the_policy_and_each_redirect(two_hosts, tmp_path):
    ls_url, other_url = two_hosts
    with LabelStudioAPI(ls_url, "0" * 40) as api:
        assert open_image(str(api.download("/a.png", tmp_path / "c1")))  # Label Studio's own file
        with pytest.raises(DownloadError, match="refused: .*not in DOWNLOAD_ALLOWED_HOSTS") as e:
            api.download(f"{other_url}/a.png", tmp_path / "c1")
        assert e.value.refused and not is_key_problem(e.value)
        with pytest.raises(DownloadError, match="refused: .*not in DOWNLOAD_ALLOWED_HOSTS"):
            api.download("/to-other", tmp_path / "c1")  # Label Studio's origin, redirected elsewhere
        with pytest.raises(DownloadError, match="refused: .*169.254.169.254"):
            api.download("/to-metadata", tmp_path / "c1")
        assert not list((tmp_path / "c1").glob("*.bin"))
    allowed = DownloadPolicy(ls_url, [other_url.split("//")[1]], max_bytes=4000)
    with LabelStudioAPI(ls_url, "0" * 40, policy=allowed) as api:
        assert open_image(str(api.download(f"{other_url}/a.png", tmp_path / "c2")))  # listed (Label Studio's host)
        assert open_image(str(api.download("/to-other", tmp_path / "c2")))  # the redirect target is listed
        with pytest.raises(DownloadError, match="4000-byte cap"):
            api.download("/big.bin", tmp_path / "c2")
        assert not list((tmp_path / "c2").glob("*.bin"))  # nothing partial left
        with pytest.raises(DownloadError) as e:
            api.download(f"{other_url}/forbidden.png", tmp_path / "c2")
        assert e.value.status == 403 and not is_key_problem(e.value)  # another host's 403: not our key
        with pytest.raises(DownloadError) as e:
            api.download("/forbidden.png", tmp_path / "c2")
        assert is_key_problem(e.value)  # Label Studio's own 403 is


def test_one_refused_task_does_not_stop_the_others(two_hosts, tmp_path):
    ls_url, other_url = two_hosts
    with LabelStudioAPI(ls_url, "0" * 40) as api:
        urls = ["/a.png", f"{other_url}/a.png", "/a.png?copy=1", "s3://bucket/a.png"]
        got = fetch_images(api, urls, tmp_path / "c", workers=3)
    assert [type(g).__name__ for g in got] == ["PosixPath", "DownloadError", "PosixPath", "DownloadError"]
    with LabelStudioAPI(ls_url, "0" * 40) as again:  # a later job: the cached files are hits, no request made
        again._http.close()  # a request would now fail
        assert fetch_images(again, [urls[2], urls[0]], tmp_path / "c", workers=3) == [got[2], got[0]]


def test_a_decompression_bomb_is_a_clean_decode_error(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (Image.MAX_IMAGE_PIXELS // 1000 + 1, 1001)).save(path)  # a tiny file, too many pixels
    assert path.stat().st_size < 200_000
    with pytest.raises(ImageDecodeError, match="pixel limit"):
        open_image(str(path))


def test_dns_rebinding_gets_nowhere(two_hosts, tmp_path, monkeypatch):
    """A listed name that resolves to a public address for the check and to loopback afterwards: the
    request goes to the checked address, so the loopback server never sees it."""
    import ipaddress
    import socket

    import httpx

    from backend.labelstudio import download_policy
    from backend.labelstudio.download_policy import fetch_file

    _, other_url = two_hosts
    port = int(other_url.rsplit(":", 1)[1])
    hits = []
    real_getaddrinfo = socket.getaddrinfo

    def rebinding(host, *args, **kwargs):  # every lookup after the check says loopback
        if host == "rebind.example":
            hits.append(host)
            return real_getaddrinfo("127.0.0.1", *args, **kwargs)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(download_policy, "_addresses", lambda host, port: [ipaddress.ip_address("8.8.8.8")])
    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    policy = DownloadPolicy("http://ls.example:8080", [f"rebind.example:{port}"])
    assert policy.check(f"http://rebind.example:{port}/a.png") == "8.8.8.8"
    with httpx.Client(timeout=1.0) as http, pytest.raises(DownloadError) as err:
        fetch_file(http, f"http://rebind.example:{port}/a.png", tmp_path / "a.png", policy, dict, 1.0)
    assert err.value.status is None and "rebind.example" in str(err.value)
    assert hits == [] and not (tmp_path / "a.png").exists()
    # the same fetch without the pin (what a second lookup does) would have reached loopback
    with httpx.Client(timeout=5.0) as http:
        assert http.get(f"http://rebind.example:{port}/a.png").status_code == 200
    assert hits == ["rebind.example"]


def test_a_pinned_request_keeps_the_hosts_name(two_hosts, tmp_path, monkeypatch):
    """The pinned request reaches the checked address with the URL's own Host header."""
    import httpx

    from backend.labelstudio.download_policy import _pin, fetch_file

    _, other_url = two_hosts
    port = int(other_url.rsplit(":", 1)[1])
    assert _pin("https://u@cdn.example:8443/a.png?x=1", "2001:db8::1") == (
        "https://[2001:db8::1]:8443/a.png?x=1", {"Host": "cdn.example:8443"}, {"sni_hostname": "cdn.example"})
    policy = DownloadPolicy("http://ls.example:8080", [f"cdn.example:{port}"])
    monkeypatch.setattr(policy, "check", lambda url: "127.0.0.1")
    seen = []
    with httpx.Client(timeout=5.0, event_hooks={"request": [lambda r: seen.append(r.headers["host"])]}) as http:
        path = fetch_file(http, f"http://cdn.example:{port}/a.png", tmp_path / "a.png", policy, dict, 5.0)
    assert open_image(path).size == (8, 8) and seen == [f"cdn.example:{port}"]
