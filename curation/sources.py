"""Asset sources: the records to render (`list_assets`) and their local files (`fetch_asset`).

Sources (AssetsConfig.source):
- procedural: `python -m blender_scripts.procedural_assets --out DIR --seed S` run in a subprocess into
  `cache_dir/procedural-seed{S}` when its index.json is missing (or names a missing file); uid = the asset's
  name, `expected` from the index, license from the index ("cc0").
- local: every .glb/.gltf/.fbx/.obj/.blend under `local_dir` (recursively; hidden folders skipped). uid =
  the path relative to local_dir without its suffix, sanitized to [A-Za-z0-9_-] ("chars/Fox.glb" ->
  "chars_Fox"); when two files then share a uid the suffix is kept ("Fox_glb", "Fox_fbx"), and any clash
  left gets an 8-hex crc of the relative path. License, first match wins: a sidecar text file next to the
  asset (`Fox.glb.license` or `Fox.license`, first non-empty line); a `licenses.json` at the root of
  local_dir mapping a relative path, a file name or a uid to a license; else `assets.local_license`.
- objaverse: Objaverse 1.0 objects with animationCount > 0, from the annotation table at
  `assets.objaverse_annotations` (a .json / .json.gz dict uid -> metadata as `objaverse.load_annotations()`
  returns, a JSON list of such dicts, or a .parquet with a `uid` column), else from
  `objaverse.load_annotations()` itself (downloads the metadata: needs network). Fetch:
  `objaverse.load_objects` with its download folder pointed at `cache_dir/hf-objaverse-v1`.
- objaverse_xl: the GitHub subset of Objaverse-XL (rows with source == "github", a file type Blender can
  animate: glb/gltf/fbx/blend), from the local table (parquet/json with fileIdentifier, sha256, license,
  fileType[, source, metadata]) or `objaverse.xl` GitHubDownloader.get_annotations(cache_dir). uid = the
  file's sha256 (duplicates: the first fileIdentifier in sorted order). The XL tables carry no animation
  count; when the table has an `animationCount`/`animation_count` column (or metadata key) it is applied,
  otherwise the analysis pass's `no_animation` filter does the job. Fetch: a shallow clone of the repo
  through `objaverse.xl` (save_repo_format="files") into `cache_dir/github/repos/ORG/REPO`.

Network: before any download a TCP probe of the host (`assets.fetch_timeout_s`, at most 10 s) fails fast
offline, and downloads run under a socket timeout, so a missing network is an `AssetFetchError` naming the
uid in seconds, never a hang.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import logging
import os
import re
import socket
import subprocess
import sys
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profiles.schema import AssetsConfig

log = logging.getLogger(__name__)

UID_RE = re.compile(r"^[A-Za-z0-9_-]+$")
LOCAL_SUFFIXES = (".glb", ".gltf", ".fbx", ".obj", ".blend")
XL_FILE_TYPES = ("glb", "gltf", "fbx", "blend")
REPO_ROOT = Path(__file__).resolve().parent.parent
#: annotation fields copied into AssetRecord.annotations for Objaverse 1.0 (plain JSON values only)
OBJAVERSE_FIELDS = (
    "name",
    "animationCount",
    "vertexCount",
    "faceCount",
    "viewerUrl",
    "license",
    "publishedAt",
)


class AssetFetchError(RuntimeError):
    """An asset's file could not be produced; `uid` names the asset (the rest of the shard goes on)."""

    def __init__(self, uid: str, message: str):
        super().__init__(f"asset {uid!r}: {message}")
        self.uid = uid


class AssetSourceError(RuntimeError):
    """The asset list itself could not be built (missing folder, unreadable annotation table, offline)."""


@dataclass(frozen=True)
class AssetRecord:
    """One asset to curate and render.

    uid: [A-Za-z0-9_-]+ (no dots: it names files and WebDataset keys), unique within a list.
    source: procedural | local | objaverse | objaverse_xl. path: a local file, or None until fetched.
    url: where it comes from (GitHub URL for XL), or None. license: as the source states it (raw string;
    `normalize_license` gives the comparable form). annotations: source fields (JSON values).
    expected: the procedural set's expected outcome (render | small_motion | inconsistent_scale | static).
    """

    uid: str
    source: str
    path: str | None = None
    url: str | None = None
    license: str = "unknown"
    annotations: dict[str, Any] = field(default_factory=dict, compare=False)
    expected: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.uid, str) or not UID_RE.match(self.uid):
            raise ValueError(f"asset uid {self.uid!r} must match [A-Za-z0-9_-]+")

    def to_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "source": self.source,
            "path": self.path,
            "url": self.url,
            "license": self.license,
            "annotations": self.annotations,
            "expected": self.expected,
        }


# ---------------------------------------------------------------------------------------------- licenses

_LICENSE_ALIASES = {
    "attribution": "by",
    "attribution-sharealike": "by-sa",
    "attribution-noncommercial": "by-nc",
    "mit-license": "mit",
    "expat": "mit",
}


_CC_WORDS = {
    "attribution": "by",
    "by": "by",
    "sharealike": "sa",
    "share-alike": "sa",
    "sa": "sa",
    "noncommercial": "nc",
    "non-commercial": "nc",
    "nc": "nc",
    "noderivatives": "nd",
    "noderivs": "nd",
    "no-derivatives": "nd",
    "nd": "nd",
}
_CC_URL = re.compile(r"creativecommons\.org/(licenses|publicdomain)/([a-z-]+)(?:/(\d+(?:\.\d+)?))?")
_CC_ORDER = ("by", "nc", "nd", "sa")


def _cc_family(text: str) -> tuple[str, str | None] | None:
    """(family code, version) of a Creative Commons licence written in words, a URL or a code; else None.

    "Creative Commons Attribution-ShareAlike 4.0 International" -> ("by-sa", "4.0");
    "https://creativecommons.org/licenses/by-nc/3.0/" -> ("by-nc", "3.0"); "Public domain (CC0)" -> cc0.
    """
    m = _CC_URL.search(text)
    if m:
        kind, code, version = m.groups()
        if kind == "publicdomain":
            return ("cc0", "1.0") if code == "zero" else ("pdm", None)
        text = code
    words = re.findall(r"[a-z0-9.]+(?:-[a-z]+)*", text.replace("non commercial", "noncommercial"))
    words = [w.replace("share-alike", "sharealike") for w in words]
    version = next((w for w in words if re.fullmatch(r"v?\d+(\.\d+)?", w)), None)
    if any(w in ("cc0", "zero") or w.startswith("cc0") for w in words) or "public domain" in text:
        return "cc0", "1.0"
    if not ("creative" in words or "cc" in words or m or text.startswith(("by", "cc-"))):
        return None
    parts = set()
    for w in words:
        for piece in [w, *w.split("-")]:
            if piece in _CC_WORDS:
                parts.add(_CC_WORDS[piece])
    if "by" not in parts:
        return None
    return "-".join(p for p in _CC_ORDER if p in parts), version and version.lstrip("v")


def normalize_license(value: str | None) -> str:
    """A comparable licence code: lower case, dashes, the `cc-`/`creative-commons-` prefix, a `-license`
    suffix and a version suffix dropped. "CC-BY-4.0" -> "by", "CC BY-SA 4.0" -> "by-sa", "cc0-1.0" -> "cc0",
    "Creative Commons Zero v1.0 Universal" -> "cc0", "MIT License" -> "mit", "Apache License 2.0" ->
    "apache-2.0"; the common long spellings too: "Creative Commons Attribution 4.0 International" -> "by",
    "https://creativecommons.org/licenses/by-sa/4.0/" -> "by-sa", "Public domain (CC0)" -> "cc0";
    Objaverse 1.0's codes ("by", "by-nc", "cc0", "ed"...) stay as they are; None, empty or NaN ->
    "unknown"."""
    if value is None or value != value:  # None or NaN
        return "unknown"
    raw = str(value).strip().lower()
    text = re.sub(r"[\s_/]+", "-", raw).strip("-")
    if text in ("", "none", "nan", "null", "unknown"):
        return "unknown"
    if text.startswith("cc0") or "commons-zero" in text or text in ("public-domain", "pd"):
        return "cc0"
    if text.startswith("apache"):
        return "apache-2.0" if "2" in text else "apache"
    cc = _cc_family(re.sub(r"[()\[\],;]", " ", raw))
    if cc is not None:
        return cc[0]
    for prefix in ("creative-commons-", "cc-"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    text = re.sub(r"-v?\d+(\.\d+)*$", "", text)  # "by-4.0" -> "by"
    text = re.sub(r"-license$", "", text)
    return _LICENSE_ALIASES.get(text, text)


def spdx_license(value: str | None) -> str:
    """The SPDX identifier of a licence when it is recognizably one ("CC-BY-4.0", "CC0-1.0", "MIT",
    "Apache-2.0"); a Creative Commons licence without a version gets 4.0. Else "unknown"."""
    if value is None or value != value:
        return "unknown"
    code = normalize_license(value)
    if code == "cc0":
        return "CC0-1.0"
    if code == "mit":
        return "MIT"
    if code == "apache-2.0":
        return "Apache-2.0"
    cc = _cc_family(re.sub(r"[()\[\],;]", " ", str(value).strip().lower()))
    if code in ("by", "by-sa", "by-nc", "by-nd", "by-nc-sa", "by-nc-nd"):
        version = (cc[1] if cc and cc[1] else None) or "4.0"
        version = version if "." in version else f"{version}.0"
        return f"CC-{code.upper()}-{version}"
    return "unknown"


def license_allowed(value: str | None, allow: list[str] | tuple[str, ...]) -> bool:
    """True when the normalized licence equals one of the normalized allow-list entries (exact match, so
    an allowed "by" does not let "by-nc" through)."""
    return normalize_license(value) in {normalize_license(a) for a in allow}


# ---------------------------------------------------------------------------------------------- helpers


def sanitize_uid(text: str) -> str:
    """Any string -> [A-Za-z0-9_-]+ (other characters become '_', runs collapsed, edges stripped)."""
    uid = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")
    return uid or "asset"


def _cache_dir(cfg: AssetsConfig) -> Path:
    return Path(os.path.expanduser(cfg.cache_dir)).resolve()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (several Ray workers may need the same generated set)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _finish(records: list[AssetRecord], cfg: AssetsConfig) -> list[AssetRecord]:
    records = sorted(records, key=lambda r: r.uid)
    for a, b in zip(records, records[1:]):
        if a.uid == b.uid:
            raise AssetSourceError(f"duplicate asset uid {a.uid!r} ({a.path or a.url} and {b.path or b.url})")
    if cfg.limit > 0:
        records = records[: cfg.limit]
    return records


def list_assets(cfg: AssetsConfig) -> list[AssetRecord]:
    """The configured source's records, sorted by uid (deterministic: shard slicing relies on it), after
    `cfg.limit`. Raises AssetSourceError when the list cannot be built."""
    listers = {
        "procedural": _list_procedural,
        "local": _list_local,
        "objaverse": _list_objaverse,
        "objaverse_xl": _list_objaverse_xl,
    }
    if cfg.source not in listers:
        raise ValueError(f"unknown asset source {cfg.source!r}; known: {sorted(listers)}")
    return _finish(listers[cfg.source](cfg), cfg)


def fetch_asset(record: AssetRecord, cfg: AssetsConfig) -> Path:
    """The record's local file, generated or downloaded into cfg.cache_dir when needed.

    Raises AssetFetchError (naming the uid) when it cannot be produced: a missing local file, no network,
    an object the package does not know.
    """
    if record.source == "procedural":
        path = Path(record.path) if record.path else None
        if path is None or not path.is_file():
            _ensure_procedural(cfg)
            path = procedural_dir(cfg) / f"{record.uid}.glb" if path is None else path
        if not path.is_file():
            raise AssetFetchError(record.uid, f"the procedural generator did not produce {path}")
        return path
    if record.path:
        path = Path(os.path.expanduser(record.path))
        if path.is_file():
            return path
        if record.source == "local":
            raise AssetFetchError(record.uid, f"file {path} is missing")
    if record.source == "objaverse":
        return _fetch_objaverse(record, cfg)
    if record.source == "objaverse_xl":
        return _fetch_objaverse_xl(record, cfg)
    raise AssetFetchError(record.uid, f"no file and no way to fetch from source {record.source!r}")


# ---------------------------------------------------------------------------------------------- procedural


def procedural_dir(cfg: AssetsConfig) -> Path:
    return _cache_dir(cfg) / f"procedural-seed{cfg.seed}"


def _procedural_index(out: Path) -> list[dict[str, Any]] | None:
    index = out / "index.json"
    if not index.is_file():
        return None
    try:
        entries = json.loads(index.read_text())
    except json.JSONDecodeError:
        return None
    if not isinstance(entries, list) or not all((out / e.get("file", "")).is_file() for e in entries):
        return None
    return entries


def _ensure_procedural(cfg: AssetsConfig, timeout_s: float = 900.0) -> list[dict[str, Any]]:
    out = procedural_dir(cfg)
    entries = _procedural_index(out)
    if entries is not None:
        return entries
    with _file_lock(out.parent / f".{out.name}.lock"):
        entries = _procedural_index(out)  # another process may have built it while we waited
        if entries is not None:
            return entries
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "blender_scripts.procedural_assets", "--out", str(out)]
        cmd += ["--seed", str(cfg.seed)]
        log.info("generating procedural assets: %s", " ".join(cmd))
        try:
            proc = subprocess.run(
                cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise AssetSourceError(f"procedural generator timed out after {timeout_s:.0f} s") from exc
        entries = _procedural_index(out)
        if proc.returncode != 0 or entries is None:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
            raise AssetSourceError(
                f"procedural generator failed (exit {proc.returncode}) into {out}:\n{tail}"
            )
    return entries


def _list_procedural(cfg: AssetsConfig) -> list[AssetRecord]:
    out = procedural_dir(cfg)
    entries = _ensure_procedural(cfg)
    if cfg.procedural_count > 0:
        entries = entries[: cfg.procedural_count]  # index order is the generator's fixed order
    records = []
    for e in entries:
        ann = {k: v for k, v in e.items() if k not in ("name", "file", "license", "expected")}
        records.append(
            AssetRecord(
                uid=sanitize_uid(e["name"]),
                source="procedural",
                path=str(out / e["file"]),
                license=e.get("license", "unknown"),
                annotations=ann,
                expected=e.get("expected"),
            )
        )
    return records


# ---------------------------------------------------------------------------------------------- local


def _sidecar_license(path: Path) -> str | None:
    for side in (path.with_name(path.name + ".license"), path.with_suffix(".license")):
        if side.is_file():
            for line in side.read_text(errors="replace").splitlines():
                if line.strip():
                    return line.strip()
    return None


def _list_local(cfg: AssetsConfig) -> list[AssetRecord]:
    root = Path(os.path.expanduser(cfg.local_dir))
    if not root.is_dir():
        raise AssetSourceError(f"assets.local_dir {str(root)!r} is not a folder")
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in LOCAL_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    table: dict[str, str] = {}
    if (root / "licenses.json").is_file():
        try:
            table = {str(k): str(v) for k, v in json.loads((root / "licenses.json").read_text()).items()}
        except (json.JSONDecodeError, AttributeError) as exc:
            raise AssetSourceError(
                f"{root / 'licenses.json'}: expected a JSON object path -> license"
            ) from exc
    rels = [p.relative_to(root).as_posix() for p in files]
    base = [sanitize_uid(rel.rsplit(".", 1)[0]) for rel in rels]
    counts = Counter(base)  # list.count per file would be quadratic in a folder of 100k assets
    uids = [b if counts[b] == 1 else sanitize_uid(rel) for b, rel in zip(base, rels)]
    counts = Counter(uids)
    uids = [u if counts[u] == 1 else f"{u}-{zlib.crc32(rel.encode()):08x}" for u, rel in zip(uids, rels)]
    records = []
    for path, rel, uid in zip(files, rels, uids):
        lic = _sidecar_license(path) or table.get(rel) or table.get(path.name) or table.get(uid)
        records.append(
            AssetRecord(
                uid=uid,
                source="local",
                path=str(path.resolve()),
                license=lic or cfg.local_license,
                annotations={"relative_path": rel, "size_bytes": path.stat().st_size},
            )
        )
    return records


# ---------------------------------------------------------------------------------------------- objaverse


def _read_table(path: Path) -> list[dict[str, Any]]:
    """A local annotation table -> list of row dicts. .parquet; .json/.json.gz holding a list of rows or a
    dict uid -> row (the uid is then added to the row)."""
    if not path.is_file():
        raise AssetSourceError(f"annotation table {str(path)!r} does not exist")
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise AssetSourceError(f"cannot read annotation table {path}: {exc}") from exc
    if isinstance(data, dict):
        return [{"uid": uid, **row} for uid, row in data.items()]
    if isinstance(data, list):
        return data
    raise AssetSourceError(f"{path}: expected a list of rows or a dict uid -> row")


def _probe(host: str, timeout_s: float, uid: str | None = None) -> None:
    """Fail fast when `host` cannot be reached (offline machines: DNS errors or filtered ports)."""
    try:
        with socket.create_connection((host, 443), timeout=min(timeout_s, 10.0)):
            return
    except OSError as exc:
        msg = f"cannot reach {host} ({type(exc).__name__}: {exc}); no network?"
        if uid is None:
            raise AssetSourceError(msg) from exc
        raise AssetFetchError(uid, msg) from exc


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if hasattr(value, "item"):  # numpy scalars from parquet
        return value.item()
    return str(value)


def _list_objaverse(cfg: AssetsConfig) -> list[AssetRecord]:
    if cfg.objaverse_annotations:
        rows = _read_table(Path(os.path.expanduser(cfg.objaverse_annotations)))
    else:
        import objaverse

        _probe("huggingface.co", cfg.fetch_timeout_s)
        try:
            with _socket_timeout(cfg.fetch_timeout_s):
                rows = [{"uid": k, **v} for k, v in objaverse.load_annotations().items()]
        except OSError as exc:
            raise AssetSourceError(
                f"objaverse.load_annotations failed ({exc}); "
                "set assets.objaverse_annotations to a local table"
            ) from exc
    records = []
    for row in rows:
        if _int(row.get("animationCount")) <= 0:
            continue
        uid = str(row.get("uid", ""))
        if not UID_RE.match(uid):
            log.warning("skipping objaverse row with a bad uid %r", uid)
            continue
        records.append(
            AssetRecord(
                uid=uid,
                source="objaverse",
                path=row.get("path") or None,
                url=row.get("viewerUrl") or None,
                license=str(row.get("license") or "unknown"),
                annotations={k: _jsonable(row[k]) for k in OBJAVERSE_FIELDS if k in row},
            )
        )
    return records


def _fetch_objaverse(record: AssetRecord, cfg: AssetsConfig) -> Path:
    base = _cache_dir(cfg) / "hf-objaverse-v1"
    found = sorted(base.glob(f"glbs/*/{record.uid}.glb"))
    if found:
        return found[0]
    _probe("huggingface.co", cfg.fetch_timeout_s, record.uid)
    import objaverse

    old = objaverse._VERSIONED_PATH  # the package hard-codes ~/.objaverse; point it at our cache
    objaverse._VERSIONED_PATH = str(base)
    try:
        with _socket_timeout(cfg.fetch_timeout_s):
            paths = objaverse.load_objects([record.uid], download_processes=1)
    except Exception as exc:  # urllib/gzip/json errors alike: this asset cannot be fetched
        raise AssetFetchError(record.uid, f"objaverse download failed: {type(exc).__name__}: {exc}") from exc
    finally:
        objaverse._VERSIONED_PATH = old
    if record.uid not in paths or not Path(paths[record.uid]).is_file():
        raise AssetFetchError(record.uid, "not found in Objaverse 1.0 (object-paths has no such uid)")
    return Path(paths[record.uid])


# ---------------------------------------------------------------------------------------------- objaverse-xl


def _xl_animation_count(row: dict[str, Any]) -> int | None:
    for key in ("animationCount", "animation_count"):
        if row.get(key) is not None:
            return _int(row[key])
    meta = row.get("metadata")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError:
            meta = None
    if isinstance(meta, dict):
        for key in ("animation_count", "animationCount", "num_animations"):
            if meta.get(key) is not None:
                return _int(meta[key])
    return None


def _list_objaverse_xl(cfg: AssetsConfig) -> list[AssetRecord]:
    if cfg.objaverse_annotations:
        rows = _read_table(Path(os.path.expanduser(cfg.objaverse_annotations)))
    else:
        from objaverse.xl.github import GitHubDownloader

        _probe("huggingface.co", cfg.fetch_timeout_s)
        try:
            with _socket_timeout(cfg.fetch_timeout_s):
                df = GitHubDownloader.get_annotations(download_dir=str(_cache_dir(cfg)))
        except Exception as exc:
            raise AssetSourceError(
                f"objaverse.xl annotations failed ({exc}); set assets.objaverse_annotations to a local table"
            ) from exc
        rows = df.to_dict("records")
    rows = sorted(rows, key=lambda r: str(r.get("fileIdentifier", "")))
    records: dict[str, AssetRecord] = {}
    for row in rows:
        if str(row.get("source", "github")).lower() != "github":
            continue
        if str(row.get("fileType", "")).lower().lstrip(".") not in XL_FILE_TYPES:
            continue
        count = _xl_animation_count(row)
        if count is not None and count <= 0:
            continue
        uid = str(row.get("sha256") or "")
        if not UID_RE.match(uid) or uid in records:
            continue
        lic = row.get("license")
        records[uid] = AssetRecord(
            uid=uid,
            source="objaverse_xl",
            path=row.get("path") or None,
            url=str(row["fileIdentifier"]),
            license="unknown" if lic is None or lic != lic else str(lic),  # NaN from pandas
            annotations={
                "fileType": str(row.get("fileType")),
                "animationCount": count,
                "sha256": uid,
            },
        )
    return list(records.values())


_GITHUB_URL = re.compile(r"^https://github\.com/([^/]+)/([^/]+)/blob/([^/]+)/(.+)$")


def _fetch_objaverse_xl(record: AssetRecord, cfg: AssetsConfig) -> Path:
    m = _GITHUB_URL.match(record.url or "")
    if not m:
        raise AssetFetchError(record.uid, f"not a GitHub blob URL: {record.url!r}")
    org, repo, _commit, rel = m.groups()
    base = _cache_dir(cfg)
    repos = (base / "github" / "repos").resolve()
    local = confined(repos, Path(org) / repo / rel, record.uid)
    if local.is_file():
        return local
    _probe("github.com", cfg.fetch_timeout_s, record.uid)
    import pandas as pd
    from objaverse.xl.github import GitHubDownloader

    objects = pd.DataFrame([{"fileIdentifier": record.url, "sha256": record.uid}])
    try:
        with _socket_timeout(cfg.fetch_timeout_s):
            paths = GitHubDownloader.download_objects(
                objects, download_dir=str(base), processes=1, save_repo_format="files"
            )
    except Exception as exc:
        raise AssetFetchError(
            record.uid, f"objaverse.xl download failed: {type(exc).__name__}: {exc}"
        ) from exc
    path = confined(repos, Path(paths.get(record.url, local)), record.uid)
    if not path.is_file():
        raise AssetFetchError(record.uid, f"{record.url} is not in the cloned repository")
    return path


def confined(root: Path, path: Path, uid: str) -> Path:
    """`path` (relative to `root`, or absolute) resolved, symlinks included; AssetFetchError unless it lies
    inside `root`: an annotation with `..` or a link in a cloned repository must not pick any local file."""
    full = (root / path).resolve()
    if full != root and root not in full.parents:
        raise AssetFetchError(uid, f"{path} leaves the cache folder {root}")
    return full
