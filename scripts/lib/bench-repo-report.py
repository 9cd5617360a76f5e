#!/usr/bin/env python3
"""Report of scripts/bench-repo.sh (not a test): reads the per-run measurement files it wrote
into WORK and prints each figure and each issue #17 target ratio as min / median / max over
the runs; a target is met when its worst run meets it. Usage: bench-repo-report.py WORK SIZE_MIB RUNS"""
import json
import os
import statistics
import sys

w, mib, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
R = range(1, runs + 1)


def val(kind, n, r):
    return float(open(f"{w}/{n}.{r}.{kind}").read())


def secs(n, r): return val("secs", n, r)
def cpu(n, r): return val("cpu", n, r)
def rss(n, r): return val("rss", n, r) / 1024
def s3cpu(n, r): return val("s3cpu", n, r)
def allcpu(n, r): return val("allcpu", n, r)
def stored(n, r): return json.load(open(f"{w}/{n}.{r}.out"))["volumes"][0]["bytes_stored"]
def med(xs): return statistics.median(list(xs))


print()
print(f"image {mib} MiB, {runs} run(s), {os.cpu_count()} cores. Per figure: wall seconds (min / median / max),")
print("median CPU seconds of the client, of s3s-fs (the store, on the same machine) and of everything")
print("else the machine ran meanwhile ('others': other work takes cores from every side).")
print(f"  {'':<18} {'wall s min / med / max':>24} {'CPU':>6} {'s3s-fs':>7} {'others':>7} {'RSS max':>8}")
for n in ["zstd_full", "vg_plain_full", "vg_enc_full", "restic_full", "vg_plain_incr", "vg_enc_incr",
          "restic_incr", "vg_plain_restore", "vg_enc_restore", "restic_restore"]:
    ws = sorted(secs(n, r) for r in R)
    others = med(max(0.0, allcpu(n, r) - cpu(n, r) - s3cpu(n, r)) for r in R)
    print(f"  {n:<18} {ws[0]:7.2f} {med(ws):7.2f} {ws[-1]:7.2f}   {med(cpu(n, r) for r in R):6.2f} "
          f"{med(s3cpu(n, r) for r in R):7.2f} {others:7.2f} {max(rss(n, r) for r in R):5.0f} MiB")

print()
print("targets (issue 17): min / median / max over the runs; met when the worst run meets it")


def line(name, vals, fmt, target, ok=None):
    v = sorted(vals)
    s = " / ".join(fmt(x) for x in (v[0], statistics.median(v), v[-1]))
    verdict = "" if ok is None else ("OK" if ok(v) else "MISSED")
    print(f"  {name:<58} {s:>26}   {target:<9} {verdict}")


def x(v): return f"{v:.2f}x"
def c(v): return f"{v:.2f}"
def pct(v): return f"{v:.1f}%"
def at_least(t): return lambda v: v[0] >= t
def at_most(t): return lambda v: v[-1] <= t


line("full backup wall, restic / ours encrypted",
     [secs("restic_full", r) / secs("vg_enc_full", r) for r in R], x, ">= 3x", at_least(3))
line("full backup wall, restic / ours unencrypted",
     [secs("restic_full", r) / secs("vg_plain_full", r) for r in R], x, "(info)")
line("full backup wall, zstd -3 -T0 / ours encrypted",
     [secs("zstd_full", r) / secs("vg_enc_full", r) for r in R], x, "aim >= 1x")
line("full backup CPU s, restic / ours encrypted",
     [cpu("restic_full", r) / cpu("vg_enc_full", r) for r in R], x, ">= 4x", at_least(4))
line("cores used by our encrypted full backup (CPU s / wall s)",
     [cpu("vg_enc_full", r) / secs("vg_enc_full", r) for r in R], c, ">= 1.8", at_least(1.8))
line("  same, with s3s-fs's CPU (the store shares the machine)",
     [(cpu("vg_enc_full", r) + s3cpu("vg_enc_full", r)) / secs("vg_enc_full", r) for r in R], c, "(info)")
line("  cores busy on the whole machine meanwhile",
     [allcpu("vg_enc_full", r) / secs("vg_enc_full", r) for r in R], c, "(info)")
line("restore wall, restic / ours encrypted",
     [secs("restic_restore", r) / secs("vg_enc_restore", r) for r in R], x, ">= 3x", at_least(3))
line("restore wall, restic / ours unencrypted",
     [secs("restic_restore", r) / secs("vg_plain_restore", r) for r in R], x, "(info)")
line("restore CPU s, restic / ours encrypted",
     [cpu("restic_restore", r) / cpu("vg_enc_restore", r) for r in R], x, "(info)")
line("incremental (5% changed) speed-up vs our full, encrypted",
     [secs("vg_enc_full", r) / secs("vg_enc_incr", r) for r in R], x, ">= 5x", at_least(5))
line("incremental stored bytes / full stored bytes, encrypted",
     [100 * stored("vg_enc_incr", r) / stored("vg_enc_full", r) for r in R], pct, "<= 6%", at_most(6))
line("  same, counting every object written (index, manifest)",
     [100 * (int(open(f"{w}/enc_after_incr.{r}.bytes").read())
             - int(open(f"{w}/enc_before_incr.{r}.bytes").read())) / stored("vg_enc_full", r) for r in R],
     pct, "<= 6%", at_most(6))
ours = ["vg_plain_full", "vg_enc_full", "vg_plain_incr", "vg_enc_incr", "vg_plain_restore", "vg_enc_restore"]
line("peak RSS of any virtguard run", [max(rss(n, r) for n in ours) for r in R],
     lambda v: f"{v:.0f} MiB", "<= 256", at_most(256))
if os.path.exists(f"{w}/vg_enc_big.rss"):
    big = int(open(f"{w}/vg_enc_big.rss").read()) / 1024
    print(f"  {'peak RSS, encrypted full backup of the RSS_MIB image':<58} {big:>22.0f} MiB   <= 256    "
          f"{'OK' if big <= 256 else 'MISSED'}")
print(f"  (zstd -3 output {int(open(w + '/zstd.1.bytes').read()) / 2**20:.0f} MiB; "
      f"ours stored {stored('vg_enc_full', 1) / 2**20:.0f} MiB)")
