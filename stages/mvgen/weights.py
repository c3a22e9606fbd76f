"""The official weights in one command: `python -m stages.mvgen.weights download [--weights weights]`.

Fetches every file of weights/README.md from its source, checks it, and converts the 4DM parts into
`weights/fourdm` (`stages.mvgen.conversion`); `--only eval` or `--only fourdm` fetches one group.

- Hugging Face files go through `huggingface_hub` (`HF_ENDPOINT` points it at a mirror); its `.incomplete` files
  resume. A file stored with LFS has its SHA-256 as etag: the downloaded file must hash to it.
- Google Drive files (the 4DM checkpoint, I3D): `https://drive.google.com` (`FOURD_DRIVE_ENDPOINT` for another
  host). A file known only by its folder is looked up in the folder's public listing (`embeddedfolderview`); a large
  file answers with a "can't scan for viruses" page whose confirmation form is followed.
- Plain HTTPS files (LPIPS' VGG16 and heads): torchvision's file name carries the first 8 hex digits of its
  SHA-256, which is checked.
- Drive and HTTPS downloads write `<file>.part` and resume it with an HTTP Range request; the size must match the
  server's. Nothing is replaced until a file is complete and checked.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import http.client
import http.cookiejar
import logging
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from stages.common.errors import StageError
from stages.common.logs import progress, setup_logging

__all__ = ["WeightFile", "FOURDM_FILES", "EVAL_FILES", "download", "main"]

log = logging.getLogger(__name__)

DRIVE_ENDPOINT_ENV = "FOURD_DRIVE_ENDPOINT"
_CHUNK = 1 << 20
_TIMEOUT_S = 60


@dataclass(frozen=True)
class WeightFile:
    """One file to fetch: where it goes under the weights folder and where it comes from."""

    target: str
    """Path under the weights folder."""
    source: Literal["hf", "drive", "url"]
    location: str
    """`hf`: the repository id; `drive`: a file id, or `folder:<id>` to look `name` up in it; `url`: the URL."""
    name: str = ""
    """`hf`: the file's path in the repository; `drive` with a folder: the file's name there."""
    sha256_prefix: str = ""
    """Leading hex digits of the file's SHA-256, where its publisher states them."""


def _hf(repo: str, folder: str, *names: str) -> list[WeightFile]:
    return [WeightFile(f"{folder}/{n}" if folder else n, "hf", repo, n) for n in names]


FOURDM_FILES: tuple[WeightFile, ...] = (
    *_hf("Peng-Wang/ImageDream", "", "sd-v2.1-base-4view-ipmv.pt"),
    WeightFile("4dm.ckpt", "drive", "folder:19k3p2CfzQ6ArqpDNOy73RJeJhWfNs4i6", "4dm.ckpt"),  # 4Diffusion README
    *_hf(
        "stabilityai/stable-diffusion-2-1-base",
        "stable-diffusion-2-1-base",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
    ),
    *_hf(
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        "CLIP-ViT-H-14-laion2B-s32B-b79K",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ),
)
"""What `stages.mvgen.conversion` turns into weights/fourdm (weights/README.md)."""

EVAL_FILES: tuple[WeightFile, ...] = (
    *_hf("openai/clip-vit-base-patch32", "eval/clip", "config.json", "pytorch_model.bin", "preprocessor_config.json"),
    WeightFile(
        "eval/lpips/vgg16-397923af.pth",
        "url",
        "https://download.pytorch.org/models/vgg16-397923af.pth",
        sha256_prefix="397923af",
    ),
    WeightFile(
        "eval/lpips/vgg.pth",
        "url",
        "https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/master/lpips/weights/v0.1/vgg.pth",
    ),
    # VideoGPT's Kinetics-400 I3D (its download.py: _I3D_PRETRAINED_ID), as the Consistent4D FVD script loads it.
    WeightFile("eval/i3d/i3d_pretrained_400.pt", "drive", "1mQK8KD8G6UWRa5t87SRMm5PVXtlpneJT"),
)
"""The eval metrics' networks (stages/eval/README.md); distill's anchor loss reads eval/lpips."""

GROUPS: dict[str, tuple[WeightFile, ...]] = {"fourdm": FOURDM_FILES, "eval": EVAL_FILES}


# -- Hugging Face -----------------------------------------------------------------------------------------------------


def _fetch_hf(item: WeightFile, weights_dir: Path) -> Path:
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    local_dir = weights_dir / item.target[: -len(item.name)].rstrip("/") if item.target != item.name else weights_dir
    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        path = Path(hf_hub_download(item.location, item.name, local_dir=local_dir, endpoint=endpoint))
        etag = get_hf_file_metadata(hf_hub_url(item.location, item.name, endpoint=endpoint)).etag or ""
    except Exception as err:  # noqa: BLE001 - hub, HTTP and disk errors all mean "this file did not come"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise StageError(f"{item.location}/{item.name}: {first}") from None
    if re.fullmatch(r"[0-9a-f]{64}", etag):  # an LFS file: the etag is its SHA-256
        _check_sha256(path, etag, f"{item.location}/{item.name}")
    return path


# -- plain HTTP(S) and Google Drive -----------------------------------------------------------------------------------


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))


def _total_size(response: Any, start: int) -> int | None:
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return start + int(length) if length is not None else None


def _download_url(opener: urllib.request.OpenerDirector, url: str, path: Path, label: str) -> None:
    """GET `url` into `path`, resuming `<path>.part`; the size must match the server's."""
    part = path.with_name(path.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = opener.open(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:  # the part file is already whole
            total = _total_size(err, 0)
            if total == start:
                part.replace(path)
                return
        raise StageError(f"{label}: HTTP {err.code} from {url}") from None
    except OSError as err:
        raise StageError(f"{label}: {err} ({url})") from None
    with response:
        if response.status == 200:
            start = 0  # no Range support: start over
        total = _total_size(response, start)
        if start:
            log.info("%s: resuming at %.1f MiB", label, start / _CHUNK)
        chunks = iter(lambda: response.read(_CHUNK), b"")
        count = None if total is None else -(-total // _CHUNK)
        try:
            with open(part, "ab" if start else "wb") as fh:
                for chunk in progress(
                    chunks, desc=f"download {label}", unit="MiB", total=count, initial=start // _CHUNK
                ):
                    fh.write(chunk)
        except (OSError, http.client.HTTPException) as err:
            got = part.stat().st_size if part.is_file() else 0
            raise StageError(
                f"{label}: interrupted at {got} bytes ({err!r}); run the command again to resume"
            ) from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise StageError(f"{label}: got {size} of {total} bytes; run the command again to resume")
    part.replace(path)


def _drive_file_id(opener: urllib.request.OpenerDirector, endpoint: str, item: WeightFile) -> str:
    if not item.location.startswith("folder:"):
        return item.location
    folder = item.location.split(":", 1)[1]
    url = f"{endpoint}/embeddedfolderview?id={urllib.parse.quote(folder)}"
    try:
        with opener.open(url, timeout=_TIMEOUT_S) as response:
            page = response.read().decode("utf-8", "replace")
    except OSError as err:
        raise StageError(f"{item.target}: cannot list Google Drive folder {folder} ({err})") from None
    # One entry per file: <div class="flip-entry" id="entry-<file id>"> … <div class="flip-entry-title">name</div>
    entries = re.findall(r'id="entry-([\w-]+)".*?class="flip-entry-title">([^<]*)<', page, flags=re.S)
    found = [file_id for file_id, title in entries if html.unescape(title).strip() == item.name]
    if not found:
        names = sorted(html.unescape(t).strip() for _, t in entries)
        raise StageError(f"Google Drive folder {folder} has no {item.name!r} (it lists {names})")
    return found[0]


def _drive_confirmed_url(opener: urllib.request.OpenerDirector, endpoint: str, file_id: str, label: str) -> str:
    """The URL that serves the file's bytes: a large file first answers with a confirmation page."""
    url = f"{endpoint}/uc?export=download&id={urllib.parse.quote(file_id)}"
    try:
        with opener.open(url, timeout=_TIMEOUT_S) as response:
            if "text/html" not in response.headers.get("Content-Type", ""):
                return response.url  # small file: served at once (fetched again below, with resume)
            page = response.read().decode("utf-8", "replace")
    except OSError as err:
        raise StageError(f"{label}: {err} ({url})") from None
    form = re.search(r'<form[^>]*id="download-form"[^>]*action="([^"]+)"(.*?)</form>', page, flags=re.S)
    if form:
        fields = dict(re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', form.group(2)))
        return (
            html.unescape(form.group(1))
            + "?"
            + urllib.parse.urlencode({k: html.unescape(v) for k, v in fields.items()})
        )
    token = re.search(r"confirm=([0-9A-Za-z_-]+)", page)
    if token:
        return f"{url}&confirm={token.group(1)}"
    raise StageError(f"{label}: Google Drive answered {url} with a page that is neither the file nor a confirmation")


def _fetch_http(item: WeightFile, weights_dir: Path) -> Path:
    path = weights_dir / item.target
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        opener = _opener()
        if item.source == "drive":
            endpoint = os.environ.get(DRIVE_ENDPOINT_ENV, "https://drive.google.com").rstrip("/")
            file_id = _drive_file_id(opener, endpoint, item)
            url = _drive_confirmed_url(opener, endpoint, file_id, item.target)
        else:
            url = item.location
        _download_url(opener, url, path, item.target)
    if item.sha256_prefix:
        _check_sha256(path, item.sha256_prefix, item.target)
    return path


def _check_sha256(path: Path, expected: str, label: str) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(expected):
        bad = path.with_name(path.name + ".corrupt")
        path.replace(bad)
        raise StageError(f"{label}: SHA-256 {digest.hexdigest()[:16]}… is not the published {expected[:16]}… ({bad})")


# -- the command ------------------------------------------------------------------------------------------------------


def download(
    weights_dir: Path,
    groups: Sequence[str] = ("fourdm", "eval"),
    *,
    convert: bool = True,
    convert_kwargs: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Fetch every file of `groups` into `weights_dir` (files already there are kept and checked), then convert the
    4DM files into `weights_dir/fourdm` when that group was fetched.

    Args:
        convert_kwargs: passed on to `stages.mvgen.conversion.convert` (the tests' tiny architectures).

    Raises:
        StageError: a file that cannot be fetched, is incomplete or fails its check (names it), or a failed conversion.
    """
    weights_dir = Path(weights_dir)
    paths = []
    for group in groups:
        for item in GROUPS[group]:
            log.info("%s ← %s %s%s", item.target, item.source, item.location, f" {item.name}" if item.name else "")
            paths.append(_fetch_hf(item, weights_dir) if item.source == "hf" else _fetch_http(item, weights_dir))
    if convert and "fourdm" in groups:
        from stages.mvgen.conversion import convert as convert_checkpoints

        log.info("converting into %s", weights_dir / "fourdm")
        convert_checkpoints(
            imagedream=weights_dir / "sd-v2.1-base-4view-ipmv.pt",
            fourdm=weights_dir / "4dm.ckpt",
            text_encoder=weights_dir / "stable-diffusion-2-1-base",
            image_encoder=weights_dir / "CLIP-ViT-H-14-laion2B-s32B-b79K",
            output=weights_dir / "fourdm",
            **dict(convert_kwargs or {}),
        )
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.mvgen.weights", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("download", help="fetch, check and convert the official weights (weights/README.md)")
    fetch.add_argument("--weights", type=Path, default=Path("weights"), help="the weights folder (default weights)")
    fetch.add_argument(
        "--only", choices=sorted(GROUPS), action="append", help="one group: fourdm (4DM + encoders) or eval (metrics)"
    )
    fetch.add_argument("--no-convert", action="store_true", help="fetch only; do not build weights/fourdm")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        download(args.weights, args.only or ("fourdm", "eval"), convert=not args.no_convert)
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    log.info("weights in %s", args.weights)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
