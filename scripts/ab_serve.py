#!/usr/bin/env python3
"""A/B (or A/B/C...) of release examples kept up with `--serve`, in paired rounds.

Each argument after the options is `LABEL=COMMAND`: an example binary and its arguments (space-separated,
no shell quoting), which must accept `--repeat 1 --serve` (capture, generate, map_throughput). All commands
load and warm up once; then each round asks every one in turn for `--repeat` more passes. Reported: each
command's median rate and the median (range) over rounds of its ratio to the first command. Pairing within a
round cancels most of this VM's drift (docs/PERFORMANCE.md).

  python scripts/ab_serve.py --rounds 6 --repeat 3 \\
      "f32=target/release/examples/capture --model M --input ids.jsonl --points resid_post.15 --out /tmp/a.st" \\
      "bf16=target/release/examples/capture --model M --input ids.jsonl --points resid_post.15 --out /tmp/b.st --dtype bf16"
"""
import argparse
import statistics
import subprocess
import sys
import tempfile


def rate(proc):
    for line in proc.stdout:
        if "/s: " in line:
            return float(line.split()[-1])
    proc.stderr.seek(0)
    sys.exit(f"{proc.args[0]} failed:\n{proc.stderr.read()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=3, help="passes per measurement")
    ap.add_argument("commands", nargs="+", metavar="LABEL=COMMAND")
    args = ap.parse_args()
    procs = {}
    for spec in args.commands:
        label, sep, cmd = spec.partition("=")
        if not sep or not cmd.strip():
            sys.exit(f"expected LABEL=COMMAND, got {spec!r}")
        err = tempfile.TemporaryFile(mode="w+")
        p = subprocess.Popen(cmd.split() + ["--repeat", "1", "--serve"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)
        p.stderr = err
        rate(p)  # load, warm-up, one timed pass
        procs[label] = p
    rates = {k: [] for k in procs}
    for _ in range(args.rounds):
        for label, p in procs.items():
            p.stdin.write(f"{args.repeat}\n")
            p.stdin.flush()
            rates[label].append(rate(p))
    base = next(iter(procs))
    for label in procs:
        r = [a / b for a, b in zip(rates[label], rates[base])]
        print(f"{label:>12}: median {statistics.median(rates[label]):9.1f}/s   vs {base}: "
              f"{statistics.median(r):.3f}x ({min(r):.3f}-{max(r):.3f})")
    for p in procs.values():
        p.stdin.close()
        p.wait()


if __name__ == "__main__":
    main()
