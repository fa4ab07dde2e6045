"""buf on protos/: lint, format and breaking-change detection (part of `make lint`).

python scripts/buf_check.py          # lint, format check, breaking against the base commit
python scripts/buf_check.py --deps   # only copy the googleapis protos buf.yaml names

buf is the npm package @bufbuild/buf that `make setup` installs into .tools/ when npm is
there; without it the check says it is skipped and passes.

The base of the breaking check: $BUF_AGAINST (any git revision) when set; else where HEAD
left main (the merge base with main or origin/main) when HEAD is not on main; else HEAD~1.
The base's protos/ and buf.yaml are compared as a directory (git archive), which works in a
fresh clone, a shallow one (no parent: skipped) and a worktree. A base without buf.yaml came
before the API was a buf module: there is nothing to hold it to, and the check says so.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUF = ROOT / ".tools" / "node_modules" / ".bin" / "buf"
#: the module buf.yaml names for google/rpc/*.proto
GOOGLEAPIS = ROOT / ".tools" / "googleapis"
#: what protos/ imports from googleapis (cost.proto) and what clients decode error details with
GOOGLE_RPC = ("status.proto", "error_details.proto")


def copy_googleapis(dest: Path) -> None:
    """Copy google/rpc/{status,error_details}.proto from the googleapis-common-protos Python
    package (the one scripts/gen_protos.py compiles against) into ``dest``."""
    import google.rpc

    source = Path(google.rpc.__path__[0])
    target = dest / "google" / "rpc"
    target.mkdir(parents=True, exist_ok=True)
    for name in GOOGLE_RPC:
        shutil.copyfile(source / name, target / name)


def git(*args: str) -> str | None:
    """``git args`` in the repository: its stdout stripped, or None when it fails."""
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def commit(rev: str) -> str | None:
    return git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")


def base_commit() -> tuple[str | None, str]:
    """The commit to compare against and how it was chosen (or None and why not)."""
    if against := os.environ.get("BUF_AGAINST"):
        found = commit(against)
        return (found, f"$BUF_AGAINST={against}") if found else (None, f"no commit {against}")
    head = commit("HEAD")
    if head is None:
        return None, "no commit checked out"
    for main in ("main", "origin/main"):
        if commit(main) is None:
            continue
        fork = git("merge-base", "HEAD", main)
        if fork and fork != head:
            return fork, f"where HEAD left {main}"
        break
    parent = commit("HEAD~1")
    return (parent, "HEAD~1") if parent else (None, "HEAD has no parent here")


def extract(rev: str, dest: Path) -> bool:
    """protos/ and buf.yaml of ``rev`` into ``dest``; False when ``rev`` has no buf.yaml."""
    if git("cat-file", "-e", f"{rev}:buf.yaml") is None:
        return False
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "buf.yaml", "protos"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    copy_googleapis(dest / ".tools" / "googleapis")
    return True


def buf(*args: str) -> int:
    print("+ buf " + " ".join(args), flush=True)
    return subprocess.run([str(BUF), *args], cwd=ROOT, check=False).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deps", action="store_true", help="only copy the googleapis protos")
    args = parser.parse_args()
    copy_googleapis(GOOGLEAPIS)
    if args.deps:
        return 0
    if not BUF.exists():
        print("buf: skipped (not installed: `make setup` installs it when npm is on PATH)")
        return 0
    failed = buf("lint") or buf("format", "--diff", "--exit-code")
    if failed:
        return failed
    rev, why = base_commit()
    if rev is None:
        print(f"buf breaking: skipped ({why})")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        if not extract(rev, Path(tmp)):
            print(f"buf breaking: skipped (base {rev[:12]}, {why}, has no buf.yaml yet)")
            return 0
        print(f"buf breaking: against {rev[:12]} ({why})")
        return buf("breaking", "--against", tmp)


if __name__ == "__main__":
    sys.exit(main())
