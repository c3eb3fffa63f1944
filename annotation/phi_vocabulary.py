"""Medical vocabulary that keeps the PHI gate from flagging drug names, diseases and Title-Case headings.

spaCy's small model calls many capitalised medical words a PERSON or a place ("Lenz Majewski
hyperostosis", "Valtrex", "Pathogen Screening", "Treatment Options"). A spaCy PERSON guess is dropped when
every word of it is medical or ordinary English vocabulary and none is a common personal name; labelled
and titled names ("Dr. X", "Patient: X") and every pattern recognizer are never filtered by it.

Sources (all offline once installed):

- `phi_vocabulary.txt.gz`, shipped beside this module, derived from MedQuAD (Ben Abacha & Demner-Fushman,
  BMC Bioinformatics 2019; CC BY 4.0; github.com/abachaa/MedQuAD, commit 577bd37): the words of all
  10,544 focus names and 21,064 synonyms of its 12 collections (diseases, drugs, herbs, tests), every
  word that its NIH answers write in lower case at least twice (so "Screening" in a heading reads as the
  word "screening"), and the adjacent word pairs of focus names and synonyms that hold a census name
  ("lenz majewski", "doyne honeycomb": eponyms). Plus the lower-case words of the K-QA questions and
  physician answers (MIT). Rebuild with
  `python -m annotation.phi_vocabulary --medquad DIR --kqa data/kqa/kqa_physician_answers_201.jsonl`.
- PyPI `drug-named-entity-recognition` (MIT, Fast Data Science; its dictionary is built from DrugBank
  open data, MeSH, MedlinePlus, the NHS and Wikipedia): about 107,000 generic and brand drug names and
  synonyms.
- PyPI `english-words` (MIT): the lower-case entries of Webster's Second International (`web2`, public
  domain), i.e. ordinary English words; proper nouns are capitalised there and left out.

Reading the two pickled lists takes seconds, so everything the rules look up (with the census lists) is
cached as JSON in `~/.cache/clinalign/phi/` under a key of the sources' sizes and times.

A word is a *name* (never vocabulary) when it is a US Census 1990 first name or one of the 5,000 most
frequent census surnames (PyPI `names`, MIT): "Allegra Hutchins" stays a name although Allegra is a
brand of fexofenadine, and so does "Chen".
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

VOCAB_FILE = Path(__file__).with_name("phi_vocabulary.txt.gz")
COMMON_SURNAME_RANK = 5000  # census surnames up to this rank are names, whatever else they mean
_WORD = re.compile(r"[a-z][a-z'\-]*[a-z]|[a-z]")
_SPLIT = re.compile(r"[\s\-/,()\[\];:]+")


def norm(word: str) -> str:
    """Lower case, edge punctuation and a possessive removed: "Crohn's," -> "crohn"."""
    w = word.strip(".,;:()[]{}'\"*`!?").lower()
    for suffix in ("'s", "’s"):
        w = w.removesuffix(suffix)
    return w


def tokens(phrase: str) -> list[str]:
    return [t for t in (norm(x) for x in _SPLIT.split(phrase)) if t]


@dataclass(frozen=True)
class Vocabulary:
    words: frozenset[str]  # lower case
    pairs: frozenset[tuple[str, str]]
    firsts: frozenset[str]  # census first names, upper case (less the stop list of phi_recognizers)
    surnames: frozenset[str]  # census surnames up to COMMON_SURNAME_RANK, upper case
    census: frozenset[str]  # every census first name and surname, upper case
    drugs: frozenset[str]  # the words of the drug dictionary alone (lower case)

    def __contains__(self, word: str) -> bool:
        return norm(word) in self.words


def _package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    return path if path.is_file() else None


def _sources() -> dict[str, Path | None]:
    return {"shipped": VOCAB_FILE if VOCAB_FILE.is_file() else None,
            "drugs": _package_file("drug_named_entity_recognition", "drug_ner_dictionary.pkl.bz2"),
            "web2": _package_file("english_words", "data", "web2.pickle"),
            "last": _package_file("names", "dist.all.last"),
            "male": _package_file("names", "dist.male.first"),
            "female": _package_file("names", "dist.female.first")}


_CACHE_VERSION = "2"


@lru_cache(maxsize=1)
def vocabulary() -> Vocabulary:
    """Everything the gate's evidence rules look up, read once per process. Reading the sources takes
    2-3 s (two pickled dictionaries); the result is cached as JSON in ~/.cache/clinalign/phi/ under a key
    of the sources' paths, sizes and times, so later processes read it in about 0.1 s."""
    from annotation.phi_recognizers import ALLOW_LIST, FIRST_NAME_STOP

    sources = _sources()
    stamp = [_CACHE_VERSION, COMMON_SURNAME_RANK, sorted(ALLOW_LIST), sorted(FIRST_NAME_STOP)]
    for name, path in sorted(sources.items()):
        st = path.stat() if path else None
        stamp.append([name, str(path), st.st_size if st else 0, st.st_mtime_ns if st else 0])
    key = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]
    cached = _cache_dir() / f"vocabulary-{key}.json"
    try:
        data = json.loads(cached.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = _read_sources(sources, ALLOW_LIST, FIRST_NAME_STOP)
        _write_cache(cached, data)
    return Vocabulary(frozenset(data["words"]), frozenset(tuple(p) for p in data["pairs"]),
                      frozenset(data["firsts"]), frozenset(data["surnames"]), frozenset(data["census"]),
                      frozenset(data["drugs"]))


def _write_cache(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: the vocabulary is still used, only not cached


def _read_sources(sources: dict[str, Path | None], allow_list, first_name_stop) -> dict[str, list]:
    words: set[str] = {norm(w) for w in allow_list}
    pairs: set[tuple[str, str]] = set()
    drugs: set[str] = set()
    if sources["shipped"]:
        with gzip.open(sources["shipped"], "rt", encoding="utf-8") as fh:
            for line in fh:
                line = line.rstrip("\n")
                if not line or line.startswith("#"):
                    continue
                if " " in line:
                    a, b = line.split(" ", 1)
                    pairs.add((a, b))
                else:
                    words.add(line)
    if sources["drugs"]:
        import bz2
        import pickle

        with bz2.open(sources["drugs"]) as fh:
            data = pickle.load(fh)  # noqa: S301 - the installed package's own dictionary, read as it reads it
        for variant in data.get("drug_variant_to_canonical", {}):
            drugs.update(t for t in tokens(variant) if _usable(t))
        words |= drugs
    if sources["web2"]:
        import pickle

        with open(sources["web2"], "rb") as fh:
            web2 = pickle.load(fh)  # noqa: S301 - the installed package's own word list
        # Webster's Second capitalises proper nouns only: its lower-case entries are ordinary words.
        words.update(w for w in web2 if w.islower() and _usable(w))
    firsts: set[str] = set()
    for name in ("male", "female"):
        if sources[name]:
            firsts.update(line.split()[0] for line in sources[name].read_text().splitlines() if line.strip())
    firsts -= set(first_name_stop)
    surnames, census = set(), set(firsts)
    if sources["last"]:
        for line in sources["last"].read_text().splitlines():
            parts = line.split()
            if len(parts) == 4:
                census.add(parts[0])
                if int(parts[3]) <= COMMON_SURNAME_RANK:
                    surnames.add(parts[0])
    return {"words": sorted(words), "pairs": sorted(pairs), "firsts": sorted(firsts),
            "surnames": sorted(surnames), "census": sorted(census), "drugs": sorted(drugs)}


def name_like(word: str) -> bool:
    """A census first name or a frequent census surname: never vocabulary."""
    v = vocabulary()
    w = norm(word).upper()
    return w in v.firsts or w in v.surnames


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "clinalign" / "phi"


def _usable(token: str) -> bool:
    """A word worth keeping: letters (hyphens, apostrophes inside), at least 3 characters."""
    return len(token) >= 3 and bool(re.fullmatch(r"[a-zà-öø-ÿ][a-zà-öø-ÿ'\-]*", token))


def medical_span(text: str, *, drugs_only: bool = False) -> bool:
    """True when a spaCy PERSON guess is vocabulary, not a name: every word is medical or ordinary
    English and none is a common personal name; or every adjacent pair of its words is a pair from a
    MedQuAD focus name (an eponym such as "Lenz Majewski"). With `drugs_only` (a LOCATION guess: towns
    are often ordinary words, Bath, Reading, Mobile), every word must be a drug name ("Rasuvo")."""
    words = tokens(text)
    if not words:
        return False
    vocab = vocabulary()
    if drugs_only:
        return all(w in vocab.drugs and not name_like(w) for w in words)
    if all(w in vocab.words and not name_like(w) for w in words):
        return True
    return len(words) >= 2 and all((a, b) in vocab.pairs for a, b in zip(words, words[1:], strict=False))


# ----------------------------------------------------------------------------------------------------
# Building the shipped file (needs a MedQuAD checkout; not run at import)

def build(medquad: Path, kqa: Path | None, out: Path, *, min_count: int = 2) -> dict[str, int]:
    from annotation.phi_recognizers import census_names

    names = census_names()
    focus_words: set[str] = set()
    pairs: set[tuple[str, str]] = set()
    lower: Counter[str] = Counter()
    files = sorted(medquad.glob("*/*.xml"))
    if not files:
        raise SystemExit(f"no MedQuAD XML files under {medquad}")
    for path in files:
        xml = path.read_text(encoding="utf-8")
        for phrase in re.findall(r"<(?:Focus|Synonym)>(.*?)</(?:Focus|Synonym)>", xml, re.S):
            toks = tokens(phrase)
            focus_words.update(t for t in toks if _usable(t))
            for a, b in zip(toks, toks[1:], strict=False):
                if (a.upper() in names or b.upper() in names) and _usable(a) and _usable(b):
                    pairs.add((a, b))
        for answer in re.findall(r"<Answer>(.*?)</Answer>", xml, re.S):
            lower.update(w for w in re.findall(r"(?<![\w\-])[a-z][a-z'\-]*[a-z](?![\w\-])", answer))
    kqa_words: set[str] = set()
    if kqa is not None:
        for line in kqa.read_text(encoding="utf-8").splitlines():
            row = json.loads(line) if line.strip() else {}
            for key in ("question", "physician_answer"):
                if isinstance(row.get(key), str):
                    kqa_words.update(re.findall(r"(?<![\w\-])[a-z][a-z'\-]*[a-z](?![\w\-])", row[key]))
    common = {w for w, c in lower.items() if c >= min_count}
    words = {norm(w) for w in focus_words | common | kqa_words}
    words = {w for w in words if _usable(w)}
    header = [
        "# clinalign PHI gate vocabulary (annotation/phi_vocabulary.py). One word a line; a line with a space",
        "# is an adjacent word pair from a focus name or synonym holding a census name (an eponym).",
        "# Derived from MedQuAD (Ben Abacha & Demner-Fushman, BMC Bioinformatics 2019), CC BY 4.0,",
        "# github.com/abachaa/MedQuAD: focus names, synonyms, lower-case words of the answers (>= "
        f"{min_count} times);",
        "# and from K-QA (Manes et al. 2024, MIT): lower-case words of questions and physician answers.",
    ]
    body = sorted(words) + sorted(f"{a} {b}" for a, b in pairs)
    out.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0: the same input gives the same bytes.
    with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as fh:
        fh.write(("\n".join(header + body) + "\n").encode("utf-8"))
    return {"files": len(files), "words": len(words), "pairs": len(pairs), "focus_words": len(focus_words),
            "answer_words": len(common), "kqa_words": len(kqa_words)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Rebuild the PHI gate's shipped medical vocabulary.")
    ap.add_argument("--medquad", type=Path, required=True, help="a MedQuAD checkout (folders *_QA with XML)")
    ap.add_argument("--kqa", type=Path, default=None, help="K-QA JSONL (question, physician_answer)")
    ap.add_argument("--out", type=Path, default=VOCAB_FILE)
    args = ap.parse_args(argv)
    print(build(args.medquad, args.kqa, args.out))


if __name__ == "__main__":
    main()
