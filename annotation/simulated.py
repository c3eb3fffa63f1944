"""A simulated clinician: a scripted, deterministic stand-in for expert judgement (demos and tests only).

It is SIMULATED. Its feedback carries `annotator_id` "simulated:clinician-v2" and
`origin="simulated"`, and export never mixes it silently with human feedback. It labels demo
training pairs, judges the demo's held-out comparison (policy vs base) and serves as a PPO reward,
so it is built to be hard to game: it rewards saying what the expert reference says, in prose, and
nothing more. It knows no medicine; an answer that is right but worded unlike the reference loses.

How an answer is scored against the expert reference (and the question), step by step
------------------------------------------------------------------------------------
1. Content terms. Text is lower-cased and split into words; a compact list of ~180 English
   stop-words ("the", "and", "may", ...) and words under 3 letters (numbers excepted) are dropped;
   the rest are lightly stemmed (plural -s/-es/-ies, then -ing/-ed/-ly, then a final -e) so
   "symptoms" matches "symptom" and "caused" matches "causes". Terms count once: repeating a term
   earns nothing.
2. Coverage C (recall): share of the reference's content terms that the answer contains. Terms
   already in the question are left out of this count (when that leaves any), so restating the
   question earns no coverage.
3. Precision P: share of the answer's content terms found in the reference or the question, i.e.
   how much of the answer is on topic rather than padding.
4. Base F = (1 + b^2) P C / (b^2 P + C), with b = 1.5: missing the reference's facts costs more
   than extra words (extra length is limited separately by the verbosity penalty).
5. Penalties, each a factor in [0, 1] multiplied into F (1.0 = not applied); `penalties` reports
   every factor, so a reader can see why a score is low:
   - repetition: r = 1 - distinct/total over the answer's word 3-grams. Free up to r = 0.10, or
     up to the reference's own r when higher (some expert texts repeat boilerplate); above that
     the factor falls by 1.25 per unit of r, floor 0.1 (an answer said three times, r ~ 0.67,
     keeps ~0.29).
   - unfinished: x0.6 when the generation hit its token limit without end-of-turn
     (finished=False). When that is unknown (finished=None) it is read from the text. Unfinished:
     it ends in a dangling marker (comma, dash, "(", a bare "3." on a new line) or a stop-word
     ("... caused by the"), or without terminal punctuation (. ! ? : ) " ' *). Three endings
     without punctuation still count as finished: a final list item of at most 12 words (after a
     newline or " - ", e.g. "- Surgery - Palliative Care"), a Title-Case source line
     ("NIH: National Cancer Institute") and a URL. This catches ~92 % of MedQuAD references cut
     at a random word; 7 of the 500 demo references end mid-prose without a full stop and read
     as unfinished, so callers that know `finished` should pass it.
   - verbosity: past L = max(150, 1.5 x the reference's words), an answer of n words keeps
     sqrt(L / n) (twice the limit keeps ~0.71).
   - word_salad (answers of 12 words or more): the product of two checks.
     (a) Function words: English prose is 35-55 % stop-words. Below a minimum share of
         min(20 %, 0.75 x the reference's share) (a list-like reference lowers the bar) the
         factor falls linearly from 1 to 0.25 at 0 % (keyword dumps).
     (b) Word order: take the answer's adjacent content-term pairs whose two terms are both
         reference terms; count the share s that are also adjacent in the reference (either
         order). Chance c is that share for the same terms in random order: the reference's
         distinct adjacent pairs over all pairs of its distinct terms. Lift = (s - c) / (1 - c).
         Real answers reuse the reference's phrases ("short stature", "autosomal recessive"):
         the reference itself has lift 1, answers written independently of it 0.3-0.8 in our
         checks; the reference's words shuffled have a median of 0.06 (95th percentile 0.16 over
         the 500 demo references). With at least 6 such pairs, the factor is 1 at lift >= 0.30,
         0.1 at lift <= 0.10, linear between.
   - empty: an empty or whitespace-only answer scores 0 (factor 0.0).
6. Score = clamp(F x product of factors, 0, 1). The reference itself, as an answer, scores 1.0
   (P = C = 1, no penalty) when it ends as finished prose.

`judge` prefers the pair's response with the higher score: a tie when the texts are identical or
the gap is at most `tie_eps`; strength 1 below a gap of 0.05, 2 below 0.15, else 3.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from annotation.records import CandidatePair, Feedback

ANNOTATOR_ID = "simulated:clinician-v2"

BETA = 1.5
REPETITION_FREE, REPETITION_SLOPE, REPETITION_FLOOR = 0.10, 1.25, 0.1
UNFINISHED_FACTOR = 0.6
LIST_ITEM_MAX_WORDS = 12
VERBOSITY_MIN_WORDS, VERBOSITY_REF_RATIO = 150, 1.5
SALAD_MIN_WORDS = 12
STOP_SHARE_MIN, STOP_REF_RATIO, STOP_FLOOR = 0.20, 0.75, 0.25
ORDER_MIN_PAIRS, ORDER_LIFT_RAMP, ORDER_FLOOR = 6, (0.10, 0.30), 0.10
STRENGTH_GAPS = (0.05, 0.15)

# A compact English stop-word list: function words, auxiliaries and hedges that carry no
# medical content (so matching them earns no coverage and their share measures fluency).
STOP_WORDS = frozenset("""
a about above after again against all almost also although always am among an and another any
are around as at be because been before being below between both but by can cannot could did
do does doing don't done down during each either else enough etc even ever every few for from
further get gets got had has have having he her here hers herself him himself his how however i
if in into is it it's its itself just least less like made make makes many may me might more
most much must my myself near neither no nor not now of off often on once one only or other
others otherwise our ours ourselves out over own per perhaps quite rather really same should so
some such than that that's the their theirs them themselves then there these they this those
though through thus to too under until up upon us usually very via was we well were what when
where whether which while who whom whose why will with within without would yet you your yours
yourself
""".split())

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_TERMINAL = tuple(".!?:)\"'*")
_DANGLING = tuple(",;-–—/(&+")
_LIST_SPLIT = re.compile(r"\n|\s[-•*]\s|^\s*[-•*]\s")
_URL_END = re.compile(r"https?://\S+$")
_VOWEL = re.compile(r"[aeiouy]")
_WORD = re.compile(r"[a-z0-9]+")  # the v1 tokenizer, for unigram_f1


@dataclass(frozen=True)
class ClinicianScore:
    """The score of one answer, with the parts a reader needs to check it."""

    score: float
    coverage: float
    precision: float
    penalties: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- words and terms ---------------------------------------------------------------------------

def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower().replace("’", "'"))


def _stem(word: str) -> str:
    """Light suffix stripping in two steps (plural, then -ing/-ed/-ly); consistent, not exact."""
    if word.isdigit() or len(word) <= 3:
        return word
    w = word
    if w.endswith(("ies", "ied")) and len(w) > 4:
        w = w[:-3] + "y"
    elif w.endswith("es") and w[:-2].endswith(("x", "z", "ch", "sh", "ss")):
        w = w[:-2]
    elif w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    if w.endswith("ing") and len(w) >= 6 and _VOWEL.search(w[:-3]):
        w = w[:-3]
    elif w.endswith("ed") and not w.endswith("eed") and len(w) >= 5 and _VOWEL.search(w[:-2]):
        w = w[:-2]
    elif w.endswith("ly") and len(w) >= 6:
        w = w[:-2]
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "lsz" and not _VOWEL.match(w[-1]):
        w = w[:-1]  # stopped -> stop
    if len(w) > 4 and w.endswith("e"):
        w = w[:-1]  # cause / causes / caused / causing all -> caus
    return w


def _is_content(token: str) -> bool:
    return token not in STOP_WORDS and (len(token) >= 3 or any(c.isdigit() for c in token))


def _term_sequence(text: str) -> list[str]:
    """Content terms in text order (with repeats), for the word-order check."""
    return [_stem(t.removesuffix("'s")) for t in _tokens(text) if _is_content(t.removesuffix("'s"))]


def content_terms(text: str) -> set[str]:
    """Lower-cased, stop-words removed, lightly stemmed words; under 3 characters dropped unless digits."""
    return set(_term_sequence(text))


# --- base score --------------------------------------------------------------------------------

def _f_beta(precision: float, recall: float, beta: float = BETA) -> float:
    if precision <= 0 or recall <= 0:
        return 0.0
    b2 = beta * beta
    return (1 + b2) * precision * recall / (b2 * precision + recall)


def _coverage_precision(answer: set[str], reference: set[str], question: set[str]) -> tuple[float, float]:
    if not answer or not reference:
        return 0.0, 0.0
    new_info = reference - question or reference  # parroting the question earns no coverage
    coverage = len(answer & new_info) / len(new_info)
    precision = len(answer & (reference | question)) / len(answer)
    return coverage, precision


# --- penalties ---------------------------------------------------------------------------------

def _repeated_share(words: list[str]) -> float:
    grams = list(zip(words, words[1:], words[2:], strict=False))
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def _repetition_factor(words: list[str], reference_words: list[str]) -> float:
    # Free up to 10 %, or up to the reference's own share (some expert texts repeat boilerplate).
    free = max(REPETITION_FREE, _repeated_share(reference_words))
    excess = max(0.0, _repeated_share(words) - free)
    return max(REPETITION_FLOOR, 1 - REPETITION_SLOPE * excess)


def looks_finished(text: str) -> bool:
    """Whether a text reads as complete (the rules of `unfinished` in the module docstring)."""
    body = text.rstrip()
    if _URL_END.search(body):
        return True  # a closing link, even one ending in "/"
    if not body or body.endswith(_DANGLING) or re.search(r"(^|\n)\s*\d+[.)]$", body):
        return False  # dangling marker: "...symptoms:\n-", "... 3."
    if body.endswith(_TERMINAL):
        return True
    last_word = _tokens(body)[-1:] or [""]
    if last_word[0] in STOP_WORDS:
        return False  # "... caused by the"
    return _is_list_item_end(body) or _is_title_end(body)


def _is_list_item_end(body: str) -> bool:
    parts = _LIST_SPLIT.split(body)
    return len(parts) > 1 and 0 < len(_tokens(parts[-1])) <= LIST_ITEM_MAX_WORDS


def _is_title_end(body: str) -> bool:
    """A closing source line in Title Case, e.g. "... NIH: National Cancer Institute"."""
    return any(_is_title(re.split(pattern, body)[-1]) for pattern in (r"[.!?]\s|\n", r"[.!?:]\s|\n"))


def _is_title(tail: str) -> bool:
    words = re.findall(r"[A-Za-z][A-Za-z'’-]*", tail)
    content = [w for w in words if w.lower() not in STOP_WORDS]
    short = 0 < len(words) <= LIST_ITEM_MAX_WORDS
    return short and len(content) >= 2 and all(w[0].isupper() for w in content)


def _unfinished_factor(text: str, finished: bool | None) -> float:
    done = looks_finished(text) if finished is None else finished
    return 1.0 if done else UNFINISHED_FACTOR


def _verbosity_factor(n_words: int, reference_words: int) -> float:
    limit = max(VERBOSITY_MIN_WORDS, VERBOSITY_REF_RATIO * reference_words)
    return 1.0 if n_words <= limit else math.sqrt(limit / n_words)


def _stop_share(words: list[str]) -> float:
    return sum(w in STOP_WORDS for w in words) / len(words) if words else 0.0


def _stopword_factor(words: list[str], reference_words: list[str]) -> float:
    # A list-like reference (links, bullet lists) lowers the bar, so it never fails its own test.
    minimum = min(STOP_SHARE_MIN, STOP_REF_RATIO * _stop_share(reference_words))
    share = _stop_share(words)
    if share >= minimum:
        return 1.0
    return STOP_FLOOR + (1 - STOP_FLOOR) * share / minimum


def _order_lift(answer_seq: list[str], reference_seq: list[str]) -> float | None:
    """How much more often than chance the answer's adjacent reference terms are adjacent in the reference."""
    ref_terms = set(reference_seq)
    ref_pairs = {frozenset(p) for p in zip(reference_seq, reference_seq[1:], strict=False) if p[0] != p[1]}
    candidates = [frozenset(p) for p in zip(answer_seq, answer_seq[1:], strict=False)
                  if p[0] != p[1] and p[0] in ref_terms and p[1] in ref_terms]
    if len(candidates) < ORDER_MIN_PAIRS:
        return None  # too little evidence either way
    k = len(ref_terms)
    chance = min(1.0, len(ref_pairs) / (k * (k - 1) / 2))  # share for the same terms in random order
    share = sum(p in ref_pairs for p in candidates) / len(candidates)
    return 1.0 if chance >= 1 else max(0.0, (share - chance) / (1 - chance))


def _order_factor(answer_seq: list[str], reference_seq: list[str]) -> float:
    lift = _order_lift(answer_seq, reference_seq)
    low, high = ORDER_LIFT_RAMP
    if lift is None or lift >= high:
        return 1.0
    return ORDER_FLOOR + (1 - ORDER_FLOOR) * max(0.0, lift - low) / (high - low)


def _salad_factor(words: list[str], answer_seq: list[str], reference_words: list[str],
                  reference_seq: list[str]) -> float:
    if len(words) < SALAD_MIN_WORDS:
        return 1.0
    return _stopword_factor(words, reference_words) * _order_factor(answer_seq, reference_seq)


# --- public API --------------------------------------------------------------------------------

def _empty_score() -> ClinicianScore:
    names = ("repetition", "unfinished", "verbosity", "word_salad")
    penalties = {**dict.fromkeys(names, 1.0), "empty": 0.0}
    return ClinicianScore(score=0.0, coverage=0.0, precision=0.0, penalties=penalties)


def clinician_score(answer: str, reference: str, *, question: str = "",
                    finished: bool | None = None) -> ClinicianScore:
    """Score one answer against an expert reference (see the module docstring for the formula)."""
    words = _tokens(answer or "")
    if not words:
        return _empty_score()
    ref_words = _tokens(reference or "")
    answer_seq, reference_seq = _term_sequence(answer), _term_sequence(reference or "")
    coverage, precision = _coverage_precision(set(answer_seq), set(reference_seq), content_terms(question))
    penalties = {
        "repetition": _repetition_factor(words, ref_words),
        "unfinished": _unfinished_factor(answer, finished),
        "verbosity": _verbosity_factor(len(words), len(ref_words)),
        "word_salad": _salad_factor(words, answer_seq, ref_words, reference_seq),
        "empty": 1.0,
    }
    score = _f_beta(precision, coverage) * math.prod(penalties.values())
    return ClinicianScore(score=min(1.0, max(0.0, score)), coverage=coverage, precision=precision,
                          penalties={k: round(v, 6) for k, v in penalties.items()})


def score_batch(questions: Sequence[str], answers: Sequence[str], references: Sequence[str],
                finished: Sequence[bool | None] | None = None) -> list[float]:
    """Scores for aligned lists (a judge's or PPO reward's view); `finished` None means infer from text."""
    if not len(questions) == len(answers) == len(references):
        raise ValueError("questions, answers and references must have the same length")
    done = list(finished) if finished is not None else [None] * len(answers)
    if len(done) != len(answers):
        raise ValueError("finished must have one entry per answer")
    return [clinician_score(a, r, question=q, finished=f).score
            for q, a, r, f in zip(questions, answers, references, done, strict=True)]


def _strength(gap: float) -> int:
    low, high = STRENGTH_GAPS
    return 1 if gap < low else 2 if gap < high else 3


def judge(pair: CandidatePair, *, tie_eps: float = 1e-6,
          finished: tuple[bool | None, bool | None] = (None, None)) -> Feedback | None:
    """Simulated feedback on a pair with a reference answer; None when there is nothing to compare with."""
    if not pair.reference:
        return None
    sa = clinician_score(pair.response_a, pair.reference, question=pair.prompt, finished=finished[0])
    sb = clinician_score(pair.response_b, pair.reference, question=pair.prompt, finished=finished[1])
    gap = sa.score - sb.score
    identical = pair.response_a.strip() == pair.response_b.strip()
    preference = "tie" if identical or abs(gap) <= tie_eps else ("a" if gap > 0 else "b")
    return Feedback(pair_id=pair.id, annotator_id=ANNOTATOR_ID, preference=preference,
                    strength=1 if preference == "tie" else _strength(abs(gap)),
                    rationale=("simulated clinician score (reference coverage and precision, with "
                               "penalties): "
                               f"a={sa.score:.3f} b={sb.score:.3f}"),
                    origin="simulated", meta={"a": sa.to_dict(), "b": sb.to_dict()})


def unigram_f1(text: str, reference: str) -> float:
    """The v1 annotator's measure (word-count F1 with the reference), kept for old callers."""
    a, b = Counter(_WORD.findall(text.lower())), Counter(_WORD.findall(reference.lower()))
    common = sum((a & b).values())
    if not common:
        return 0.0
    precision, recall = common / sum(a.values()), common / sum(b.values())
    return 2 * precision * recall / (precision + recall)
