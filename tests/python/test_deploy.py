"""The deploy/ files: shell scripts parse, the Kubernetes Jobs and the Slurm array agree on the worker
count and run the shared worker / merge scripts (which scripts/fanout-check.sh runs for real).

Run: $ROSETTA_HOME/venv/bin/python -m unittest discover -s tests/python
"""

import pathlib
import re
import subprocess
import unittest

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


class ShellScripts(unittest.TestCase):
    def test_every_script_parses(self):
        scripts = [*DEPLOY.rglob("*.sh"), *DEPLOY.rglob("*.sbatch"), ROOT / "scripts" / "fanout-check.sh"]
        self.assertGreaterEqual(len(scripts), 6)
        for s in scripts:
            r = subprocess.run(["bash", "-n", str(s)], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, f"{s}: {r.stderr}")

    def test_worker_refuses_missing_settings(self):
        r = subprocess.run(["bash", str(DEPLOY / "worker.sh"), "0", "2"], capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin"})
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("SOURCE", r.stderr)

    def test_merge_names_a_missing_worker(self):
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            (pathlib.Path(d) / "worker-0").mkdir()
            r = subprocess.run(["bash", str(DEPLOY / "merge.sh"), "2"], capture_output=True, text=True,
                               env={"PATH": "/usr/bin:/bin", "STORES": d})
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("worker-1 is missing", r.stderr)


class Slurm(unittest.TestCase):
    def test_array_runs_the_shared_worker(self):
        text = (DEPLOY / "slurm" / "collect.sbatch").read_text()
        self.assertRegex(text, r"#SBATCH --array=0-\d+")
        self.assertIn('deploy/worker.sh "$SLURM_ARRAY_TASK_ID" "$SLURM_ARRAY_TASK_COUNT"', text)
        submit = (DEPLOY / "slurm" / "submit.sh").read_text()
        self.assertIn("--dependency=afterok", submit)


class Kubernetes(unittest.TestCase):
    def test_indexed_job_and_merge_agree(self):
        docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "collect-job.yaml").read_text()))
        config = next(d for d in docs if d["kind"] == "ConfigMap")
        job = next(d for d in docs if d["kind"] == "Job")
        count = int(config["data"]["COUNT"])
        self.assertEqual(job["spec"]["completionMode"], "Indexed")
        self.assertEqual(job["spec"]["completions"], count)
        self.assertEqual(job["spec"]["parallelism"], count)
        worker = job["spec"]["template"]["spec"]["containers"][0]
        self.assertIn("deploy/worker.sh \"$JOB_COMPLETION_INDEX\" \"$COUNT\"", worker["command"][-1])
        self.assertEqual(worker["resources"]["limits"]["nvidia.com/gpu"], 1)
        merge = yaml.safe_load((DEPLOY / "k8s" / "merge-job.yaml").read_text())
        mc = merge["spec"]["template"]["spec"]["containers"][0]
        self.assertIn("deploy/merge.sh", mc["command"][-1])
        claim = lambda j: j["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
        self.assertEqual(claim(job), claim(merge))
        self.assertTrue(re.fullmatch(r"cuda:\d+", config["data"]["DEVICE"]))


if __name__ == "__main__":
    unittest.main()
