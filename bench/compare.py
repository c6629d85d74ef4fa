"""The broker's CPU per login, this checkout against another revision, paired so that a noisy machine cancels out.

    python bench/compare.py BASE [--rounds 60] [--batch 20] [--redis URL] [--pg-admin URL] [--keep DIR]
    python bench/compare.py BASE --instructions 20 [--redis URL] [--pg-admin URL] [--keep DIR]

A shared VM's speed drifts by tens of percent within minutes, which hides a change worth a few percent when
two runs are minutes apart. This starts two bench/login_inproc.py processes in --stdin mode (full logins
through the app in one process; PostgreSQL + Redis when given, else SQLite + the in-process store), one
measuring BASE's `broker` package and one this checkout's, with the same client code, and has them take turns:
`--batch` logins each, in ABBA order, `--rounds` times. A round's two batches are a fraction of a second
apart, so they see about the same machine; it reports the median CPU per login of each side and step, and the
median, quartiles and range of the per-round ratios this/BASE.

BASE is any git revision of this repository; it is exported (git archive) to a temporary directory, or to
`--keep DIR` to reuse it next time. With `--pg-admin` (for example postgresql://postgres@127.0.0.1:5432/test)
each side gets a fresh database `broker_bench_cmp_<pid>_<n>`, dropped afterwards; `--redis` names BASE's Redis
database and this checkout uses the next one (both are flushed). Run by hand.

`--instructions N` counts instead of timing: each side runs N logins under valgrind's callgrind, one after the
other (bench/login_inproc.py --instructions), and the instructions the app executed per login are compared.
Those counts do not depend on the machine's speed (the same code gives the same count within about 1% per
login, 2% per step), so one run of each side is enough; it misses what instructions do not show (cache
misses, waiting on a lock or a socket) and takes a few minutes (about 50 times the native run time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def export(revision: str, into: Path) -> Path:
    """`revision`'s tree in `into` (reused when it already holds that commit)."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{revision}^{{commit}}"],
                            check=True, capture_output=True, text=True).stdout.strip()
    marker = into / ".bench-commit"
    if marker.exists() and marker.read_text().strip() == commit:
        return into
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    if not (into / "bench" / "login_inproc.py").exists():
        raise SystemExit(f"{revision} has no bench/login_inproc.py to compare with")
    marker.write_text(commit + "\n")
    return into


class Databases:
    """A fresh PostgreSQL database per run (through `admin_url`), or None: login_inproc's temporary SQLite."""

    def __init__(self, admin_url: str | None) -> None:
        self.admin_url = admin_url
        self.count = 0

    def fresh(self) -> str | None:
        if self.admin_url is None:
            return None
        import psycopg

        self.count += 1
        name = f"broker_bench_cmp_{os.getpid()}_{self.count}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        base = self.admin_url.rsplit("/", 1)[0]
        return f"{base}/{name}"

    def drop(self, url: str | None) -> None:
        if url is None or self.admin_url is None:
            return
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}"')


class Side:
    """A login_inproc.py process in --stdin mode, measuring the `broker` package of `tree`."""

    def __init__(self, tree: Path, redis: str | None, database: str | None) -> None:
        cmd = [sys.executable, str(ROOT / "bench" / "login_inproc.py"), "--stdin"]
        if redis:
            cmd += ["--redis", redis]
        if database:
            cmd += ["--database", database]
        self.proc = subprocess.Popen(cmd, cwd=tree, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "BROKER_LOG_LEVEL": "WARNING",
                                          "BENCH_BROKER_TREE": str(tree)})
        self.tree = tree
        if self._line() != "ready":
            raise SystemExit(f"{tree}: login_inproc did not start")

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.tree}: login_inproc exited ({self.proc.wait()})")
        return line.strip()

    def logins(self, k: int) -> dict[str, float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{k}\n")
        self.proc.stdin.flush()
        result: dict[str, float] = json.loads(self._line())
        return result

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def count_instructions(tree: Path, logins: int, redis: str | None, database: str | None) -> dict[str, float]:
    """Millions of instructions per login of each step and in all, the app of `tree` under callgrind."""
    cmd = [sys.executable, str(ROOT / "bench" / "login_inproc.py"), "--instructions", "--logins", str(logins)]
    if redis:
        cmd += ["--redis", redis]
    if database:
        cmd += ["--database", database]
    out = subprocess.run(cmd, cwd=tree, check=True, capture_output=True, text=True,
                         env={**os.environ, "BROKER_LOG_LEVEL": "WARNING", "BENCH_BROKER_TREE": str(tree)}).stdout
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] in ("authorize", "acs", "token", "login") and parts[2] == "M":
            counts[parts[0]] = float(parts[1])
    if len(counts) != 4:
        raise SystemExit(f"{tree}: login_inproc --instructions printed no counts:\n{out}")
    return counts


def _other_redis_db(url: str) -> str:
    """`url` with the next database number (each side flushes its own)."""
    head, _, db = url.rpartition("/")
    return f"{head}/{int(db or 0) + 1}" if db.isdigit() or not db else f"{url}/1"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base", help="the git revision to compare this checkout with")
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--batch", type=int, default=20, help="logins per side per round")
    p.add_argument("--redis", default=None,
                   help="a Redis database URL for BASE (flushed); this checkout uses the next database number")
    p.add_argument("--pg-admin", default=None, help="PostgreSQL URL to create the two databases through")
    p.add_argument("--keep", type=Path, default=None, help="export BASE here (and reuse it) instead of a temp dir")
    p.add_argument("--instructions", type=int, default=None, metavar="N",
                   help="count instructions of N logins a side under callgrind instead of timing rounds")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.batch < 1 or (args.instructions is not None and args.instructions < 1):
        p.error("--rounds, --batch and --instructions must be at least 1")
    if args.instructions is not None:
        return compare_instructions(args)

    with tempfile.TemporaryDirectory(prefix="broker-compare-") as tmp:
        trees = {"base": export(args.base, args.keep or Path(tmp) / "base"), "this": ROOT}
        redis = {"base": args.redis, "this": _other_redis_db(args.redis) if args.redis else None}
        dbs = Databases(args.pg_admin)
        urls = {side: dbs.fresh() for side in trees}
        sides: dict[str, Side] = {}
        try:
            for side, tree in trees.items():
                sides[side] = Side(tree, redis[side], urls[side])
            runs: dict[str, list[dict[str, float]]] = {"base": [], "this": []}
            for n in range(args.rounds):
                for side in (("base", "this") if n % 2 == 0 else ("this", "base")):  # ABBA
                    runs[side].append(sides[side].logins(args.batch))
        finally:
            for s in sides.values():
                s.close()
            for url in urls.values():
                dbs.drop(url)
    ratios = [t["login"] / b["login"] for t, b in zip(runs["this"], runs["base"], strict=True)]
    print(f"{'step':<10} {'base ms':>9} {'this ms':>9} {'median ratio':>13}   (CPU per login, medians of "
          f"{args.rounds} rounds of {args.batch} logins a side)")
    for step in ("authorize", "acs", "token", "login"):
        b = [r[step] for r in runs["base"]]
        t = [r[step] for r in runs["this"]]
        step_ratio = statistics.median(x / y for x, y in zip(t, b, strict=True))
        print(f"{step:<10} {statistics.median(b):9.3f} {statistics.median(t):9.3f} {step_ratio:13.3f}")
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
    print(f"\nthis/base CPU per login: median {statistics.median(ratios):.3f}, quartiles {q[0]:.3f}-{q[2]:.3f}, "
          f"range {min(ratios):.3f}-{max(ratios):.3f} (WSGI test client included on both sides)")
    return 0


def compare_instructions(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="broker-compare-") as tmp:
        trees = {"base": export(args.base, args.keep or Path(tmp) / "base"), "this": ROOT}
        dbs = Databases(args.pg_admin)
        counts: dict[str, dict[str, float]] = {}
        for side, tree in trees.items():
            url = dbs.fresh()
            try:
                counts[side] = count_instructions(tree, args.instructions, args.redis, url)
            finally:
                dbs.drop(url)
    print(f"{'step':<10} {'base':>9} {'this':>9} {'ratio':>7}   (millions of instructions per login, app only, "
          f"{args.instructions} logins a side)")
    for step in ("authorize", "acs", "token", "login"):
        b, t = counts["base"][step], counts["this"][step]
        print(f"{step:<10} {b:9.3f} {t:9.3f} {t / b:7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
