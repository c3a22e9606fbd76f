"""`python -m stages.mvgen.weights download` against a local server (127.0.0.1 only) that answers as the Hugging Face
hub (resolve URLs, X-Repo-Commit, etags, Range), Google Drive (folder listing, the large-file confirmation form,
Range) and a plain HTTPS host do, serving a tiny 4DM release; the real converter builds weights/fourdm from it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from stages.common.errors import StageError
from stages.mvgen import weights
from stages.mvgen.pipeline_fourdm import load_fourdm
from tests.mvgen.test_conversion import fresh_tiny, write_official_files
from tests.mvgen.tiny import tiny_pipeline, write_tiny_tokenizer

COMMIT = "c0ffee" * 6 + "c0ff"
UUID = "5e3c-tiny"


class Sources(ThreadingHTTPServer):
    """Hub: `hub[(repo, filename)]`; Drive: `drive[file_id] = (name, bytes, large)`, `folders[id] = [file ids]`;
    plain: `plain[path]`. `truncate[path]` sends only that many bytes of the next full answer, then hangs up."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.hub: dict[tuple[str, str], bytes] = {}
        self.hub_etag: dict[tuple[str, str], str] = {}
        self.drive: dict[str, tuple[str, bytes, bool]] = {}
        self.folders: dict[str, list[str]] = {}
        self.plain: dict[str, bytes] = {}
        self.truncate: dict[str, int] = {}
        self.log: list[tuple[str, str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Sources

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self.answer(head=True)

    def do_GET(self) -> None:
        self.answer(head=False)

    def answer(self, head: bool) -> None:
        s = self.server
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        s.log.append((self.command, url.path, self.headers.get("Range", "")))
        hub = re.fullmatch(r"/([\w.-]+/[\w.-]+)/resolve/([\w.-]+)/(.+)", url.path)
        if hub and (hub.group(1), hub.group(3)) in s.hub:
            key = (hub.group(1), hub.group(3))
            data = s.hub[key]
            etag = s.hub_etag.get(key, hashlib.sha256(data).hexdigest())
            return self.send_bytes(data, head, {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"'}, url.path)
        if url.path == "/embeddedfolderview" and query.get("id") in s.folders:
            entries = "".join(
                f'<div class="flip-entry" id="entry-{fid}" tabindex="0" role="link"><div class="flip-entry-info">'
                f'<a href="https://drive.google.com/file/d/{fid}/view?usp=drive_web" target="_blank">'
                f'<div class="flip-entry-title">{s.drive[fid][0]}</div></a></div></div>'
                for fid in s.folders[query["id"]]
            )
            return self.send_bytes(f"<html><body>{entries}</body></html>".encode(), head, {}, "", "text/html")
        if url.path == "/uc" and query.get("id") in s.drive:
            name, data, large = s.drive[query["id"]]
            if not large:
                return self.send_bytes(data, head, {}, url.path)
            page = (
                "<html><body><p>Google Drive can't scan this file for viruses.</p>"
                f'<form id="download-form" action="{s.url}/download" method="get">'
                '<input type="submit" id="uc-download-link" value="Download anyway"/>'
                f'<input type="hidden" name="id" value="{query["id"]}">'
                '<input type="hidden" name="export" value="download">'
                '<input type="hidden" name="confirm" value="t">'
                f'<input type="hidden" name="uuid" value="{UUID}"></form></body></html>'
            )
            return self.send_bytes(page.encode(), head, {}, "", "text/html; charset=utf-8")
        if url.path == "/download" and query.get("confirm") == "t" and query.get("uuid") == UUID:
            return self.send_bytes(s.drive[query["id"]][1], head, {}, url.path)
        if url.path in s.plain:
            return self.send_bytes(s.plain[url.path], head, {}, url.path)
        self.send_error(404)

    def send_bytes(self, data: bytes, head: bool, headers: dict, key: str, kind: str = "application/octet-stream"):
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if head:
            return
        cut = self.server.truncate.pop(key, None) if not match else None
        self.wfile.write(body if cut is None else body[:cut])
        if cut is not None:
            self.close_connection = True


@pytest.fixture
def sources(monkeypatch):
    server = Sources()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv(weights.DRIVE_ENDPOINT_ENV, server.url)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    yield server
    server.shutdown()
    server.server_close()


def serve_release(server: Sources, root: Path, monkeypatch) -> dict[str, bytes]:
    """Put a tiny official release on the server; the plain URLs point at it. Returns target → bytes."""
    pipe = tiny_pipeline(root / "tiny")
    files = write_official_files(pipe, root / "official")
    tokenizer = root / "official" / "tokenizer"
    write_tiny_tokenizer(tokenizer)
    (tokenizer / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    (tokenizer / "special_tokens_map.json").write_text("{}")
    local = {
        "sd-v2.1-base-4view-ipmv.pt": files["imagedream"],
        "4dm.ckpt": files["fourdm"],
        "stable-diffusion-2-1-base/text_encoder/config.json": files["text_encoder"] / "text_encoder/config.json",
        "stable-diffusion-2-1-base/text_encoder/model.safetensors": files["text_encoder"]
        / "text_encoder/model.safetensors",
        **{f"stable-diffusion-2-1-base/tokenizer/{n}": tokenizer / n for n in ("merges.txt", "vocab.json")},
        **{
            f"stable-diffusion-2-1-base/tokenizer/{n}": tokenizer / n
            for n in ("special_tokens_map.json", "tokenizer_config.json")
        },
        **{
            f"CLIP-ViT-H-14-laion2B-s32B-b79K/{n}": files["image_encoder"] / n
            for n in ("config.json", "model.safetensors", "preprocessor_config.json")
        },
    }
    content = {target: path.read_bytes() for target, path in local.items()}
    for n in ("config.json", "pytorch_model.bin", "preprocessor_config.json"):
        content[f"eval/clip/{n}"] = f"tiny {n}".encode()
    content["eval/lpips/vgg16-397923af.pth"] = b"v" * 3000
    content["eval/lpips/vgg.pth"] = b"heads"
    content["eval/i3d/i3d_pretrained_400.pt"] = b"i3d" * 1000
    groups = {}
    for group, items in weights.GROUPS.items():
        served = []
        for item in items:
            data = content[item.target]
            if item.source == "hf":
                server.hub[(item.location, item.name)] = data
            elif item.source == "drive":
                file_id = (
                    item.location.split(":")[-1] + "-file" if item.location.startswith("folder:") else item.location
                )
                server.drive[file_id] = (Path(item.target).name, data, item.target == "4dm.ckpt")
                if item.location.startswith("folder:"):
                    server.drive["readme-id"] = ("README.txt", b"read me", False)
                    server.folders[item.location.split(":")[1]] = ["readme-id", file_id]
            else:
                path = "/plain/" + Path(item.target).name
                server.plain[path] = data
                sha = hashlib.sha256(data).hexdigest()
                item = dataclasses.replace(  # noqa: PLW2901 - the local copy of the file, with its own hash
                    item, location=server.url + path, sha256_prefix=sha[: len(item.sha256_prefix)]
                )
            served.append(item)
        groups[group] = tuple(served)
    monkeypatch.setattr(weights, "GROUPS", groups)
    return content


def test_download_fetches_checks_and_converts_every_file_then_reruns_from_what_is_there(
    sources, tmp_path, monkeypatch
):
    content = serve_release(sources, tmp_path, monkeypatch)
    folder = tmp_path / "weights"
    # A half-written 4DM checkpoint, as a download killed half-way leaves it.
    part = folder / "4dm.ckpt.part"
    part.parent.mkdir(parents=True)
    half = len(content["4dm.ckpt"]) // 2
    part.write_bytes(content["4dm.ckpt"][:half])

    weights.download(folder, convert_kwargs=fresh_tiny())

    for target, data in content.items():
        assert (folder / target).read_bytes() == data, target
    assert not list(folder.rglob("*.part"))
    # The Drive checkpoint: found in its folder, confirmed through the form, resumed where the part file ended.
    drive = [(m, p, r) for m, p, r in sources.log if p in ("/embeddedfolderview", "/uc", "/download")]
    assert [p for _, p, _ in drive] == ["/embeddedfolderview", "/uc", "/download", "/uc", "/uc"]
    assert drive[2][2] == f"bytes={half}-"
    # The converter built weights/fourdm from the downloaded files: the tiny release's weights, exactly.
    ours, theirs = (
        tiny_pipeline(tmp_path / "again").unet.state_dict(),
        load_fourdm(folder / "fourdm").unet.state_dict(),
    )
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)

    sources.log.clear()
    weights.download(folder, convert=False)  # everything is there: the hub is asked for metadata only
    assert {m for m, _, _ in sources.log} == {"HEAD"}


def test_an_interrupted_download_resumes_on_the_next_run(sources, tmp_path, monkeypatch):
    content = serve_release(sources, tmp_path, monkeypatch)
    sources.truncate["/plain/vgg16-397923af.pth"] = 1000
    with pytest.raises(StageError, match=r"eval/lpips/vgg16-397923af.pth: (interrupted|got 1000 of 3000)"):
        weights.download(tmp_path / "w", ["eval"])
    assert (tmp_path / "w/eval/lpips/vgg16-397923af.pth.part").stat().st_size == 1000
    assert not (tmp_path / "w/eval/lpips/vgg16-397923af.pth").exists()
    weights.download(tmp_path / "w", ["eval"])
    assert (tmp_path / "w/eval/lpips/vgg16-397923af.pth").read_bytes() == content["eval/lpips/vgg16-397923af.pth"]
    assert ("GET", "/plain/vgg16-397923af.pth", "bytes=1000-") in sources.log


def test_a_file_that_fails_its_published_hash_is_set_aside_and_named(sources, tmp_path, monkeypatch):
    serve_release(sources, tmp_path, monkeypatch)
    sources.plain["/plain/vgg16-397923af.pth"] = b"x" * 3000  # not what the published hash describes
    with pytest.raises(StageError, match=r"vgg16-397923af.pth: SHA-256 [0-9a-f]+… is not the published"):
        weights.download(tmp_path / "w", ["eval"])
    assert (tmp_path / "w/eval/lpips/vgg16-397923af.pth.corrupt").is_file()
    assert not (tmp_path / "w/eval/lpips/vgg16-397923af.pth").exists()


def test_a_hub_file_that_does_not_hash_to_its_lfs_etag_is_refused(sources, tmp_path, monkeypatch):
    serve_release(sources, tmp_path, monkeypatch)
    key = ("openai/clip-vit-base-patch32", "pytorch_model.bin")
    sources.hub_etag[key] = hashlib.sha256(b"the real weights").hexdigest()
    with pytest.raises(
        StageError, match=r"openai/clip-vit-base-patch32/pytorch_model.bin: SHA-256 [0-9a-f]+… is not the published"
    ):
        weights.download(tmp_path / "w", ["eval"])


def test_cli_names_a_missing_drive_file_in_one_line(sources, tmp_path, monkeypatch, capsys):
    serve_release(sources, tmp_path, monkeypatch)
    sources.folders = {k: ["readme-id"] for k in sources.folders}  # the folder no longer holds 4dm.ckpt
    assert weights.main(["download", "--weights", str(tmp_path / "w"), "--only", "fourdm"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "error: Google Drive folder 19k3p2CfzQ6ArqpDNOy73RJeJhWfNs4i6 has no '4dm.ckpt' (it lists ['README.txt'])"
    )
