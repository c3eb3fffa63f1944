"""Clinical PHI recognizers for Presidio, and the allow-list that keeps clinical words out of the net.

Presidio's built-in recognizers know e-mail, URL and IP formats, and spaCy finds most personal names,
but none of them know the identifiers of a clinical note: medical record numbers, labelled record and
account numbers, dates of birth and service written the way notes write them, ages over 89 (a HIPAA
Safe Harbor identifier; younger ages are not), hospital names, US street addresses. Each recognizer
below is a list of regular expressions whose named group `phi` is the identifier itself, so that a
label such as "MRN:" stays in the text and only the value is redacted.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

# spaCy's thinc imports torch when it is installed, and Presidio imports transformers for an NLP engine
# clinalign does not use: together 6-10 s of a process's start for nothing. While spaCy and Presidio are
# imported, this thread (only this one) sees them as absent, unless the process has already imported
# them. (thinc then reports has_torch=False for the process: only spaCy pipelines wrapping PyTorch
# models, which the gate does not use, would need it. torch itself imports as usual afterwards.)
_HEAVY_MODULES = ("torch", "transformers")


class _HideHeavyModules:
    """A meta-path finder that makes `import torch` / `import transformers` fail in one thread."""

    def __init__(self, modules: tuple[str, ...]):
        self.modules, self.thread = modules, threading.get_ident()

    def find_spec(self, name, path=None, target=None):
        if threading.get_ident() == self.thread and name.partition(".")[0] in self.modules:
            raise ModuleNotFoundError(f"{name} is not needed by the PHI gate", name=name)
        return None


def import_presidio():
    """spaCy, Presidio's engine classes and the four Presidio recognizers clinalign keeps, imported with
    torch and transformers hidden from this thread (unless the process already has them)."""
    import sys

    hidden = tuple(m for m in _HEAVY_MODULES if m not in sys.modules)
    finder = _HideHeavyModules(hidden)
    if hidden:
        sys.meta_path.insert(0, finder)
    try:
        import spacy
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import SpacyNlpEngine
        from presidio_analyzer.predefined_recognizers import (
            EmailRecognizer,
            IpRecognizer,
            SpacyRecognizer,
            UrlRecognizer,
        )
    finally:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
    return spacy, AnalyzerEngine, RecognizerRegistry, SpacyNlpEngine, (EmailRecognizer, IpRecognizer,
                                                                      SpacyRecognizer, UrlRecognizer)


import_presidio()  # before the import below, which would otherwise bring torch and transformers in
from presidio_analyzer import EntityRecognizer, RecognizerResult  # noqa: E402

# Our entity types (the placeholders are "[TYPE]"); Presidio's names are mapped onto these.
NAME, DATE, AGE, PHONE, EMAIL, ADDRESS, SSN, MRN = "NAME", "DATE", "AGE", "PHONE", "EMAIL", "ADDRESS", "SSN", "MRN"
HOSPITAL, RECORD_ID, LOCATION, URL, IP_ADDRESS = "HOSPITAL", "RECORD_ID", "LOCATION", "URL", "IP_ADDRESS"
ENTITY_TYPES = (NAME, DATE, AGE, PHONE, EMAIL, ADDRESS, SSN, MRN, HOSPITAL, RECORD_ID, LOCATION, URL, IP_ADDRESS)

_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
          r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?")
_WEEKDAY = r"(?:Mon|Tues?|Wed(?:nes)?|Thu(?:rs?)?|Fri|Sat(?:ur)?|Sun)(?:day)?\.?"
_MM = r"(?:0?[1-9]|1[0-2])"
_DD = r"(?:0?[1-9]|[12]\d|3[01])"
_YY = r"(?:19\d\d|20\d\d|\d\d)"
# Words after which a bare "3/14" (no year) is a date rather than a dose or a ratio.
_DATE_CUE = (r"(?:on|since|from|until|dated?|DOS|DOB|seen|admitted|admission|discharged|discharge|"
             r"born|visit|birth|surgery|procedure|collected|drawn|onset|last seen)")

_STREET_SUFFIX = (r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|"
                  r"Terrace|Ter|Circle|Cir|Highway|Hwy|Parkway|Pkwy|Square|Sq|Trail|Trl|Row|Alley|Pike)")
_STATE = (r"(?:AL|AK|AZ|AR|CA|CO|CT|DE|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ|"
          r"NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|DC)")
_CAP = r"[A-Z][a-zA-Z'\-]+"
_FACILITY = (r"(?:Hospital|Medical Center|Medical Centre|Health Center|Health Centre|Health System|Clinic|"
             r"Infirmary|Healthcare|Health Care|Nursing Home|Rehabilitation Center|Rehab Center|Hospice|"
             r"Cancer Center|Heart Institute|Children's|Memorial|Sanatorium|Care Center|Surgical Center|"
             r"Urgent Care|Family Practice|Medical Group)")
_NAME_TITLE = r"(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Pt|Patient|Nurse|RN|NP|PA)"
# Words that start a sentence or a phrase in capitals but are never part of a facility's name.
_LEADING_WORDS = {"the", "a", "an", "to", "at", "from", "in", "of", "by", "via", "and", "or", "our", "this",
                  "that", "transferred", "seen", "admitted", "discharged", "followed", "presented", "sent",
                  "referred", "patient", "pt", "per", "with", "for", "local", "outside", "nearest"}


class RegexGroupRecognizer(EntityRecognizer):
    """Emits the span of the named group `phi` (or the whole match) for each pattern."""

    def __init__(self, entity: str, patterns: Iterable[tuple[str, float]], *, name: str,
                 flags: int = re.IGNORECASE, keep=None):
        self.entity = entity
        self.patterns = [(re.compile(p, flags), score) for p, score in patterns]
        self.keep = keep  # optional predicate(match) -> bool, for checks a regex cannot express
        super().__init__(supported_entities=[entity], name=name, supported_language="en")

    def load(self) -> None:  # nothing to load: Presidio's abstract hook
        pass

    def analyze(self, text: str, entities: list[str], nlp_artifacts=None) -> list[RecognizerResult]:
        if entities and self.entity not in entities:
            return []
        found = []
        for regex, score in self.patterns:
            for m in regex.finditer(text):
                if self.keep is not None and not self.keep(m):
                    continue
                group = "phi" if "phi" in regex.groupindex and m.group("phi") is not None else 0
                start, end = m.span(group)
                if end > start:
                    found.append(RecognizerResult(self.entity, start, end, score,
                                                  recognition_metadata={"recognizer_name": self.name}))
        return found


def _age_over_89(m: re.Match) -> bool:
    return 90 <= int(m.group("phi")) <= 130


class HospitalRecognizer(RegexGroupRecognizer):
    """Capitalised words ending in a facility word; leading sentence words ("The", "Transferred
    to") are trimmed off rather than dropping the match."""

    def analyze(self, text: str, entities: list[str], nlp_artifacts=None) -> list[RecognizerResult]:
        results = []
        for r in super().analyze(text, entities, nlp_artifacts):
            span = text[r.start:r.end]
            offset = 0
            for word in span.split(" "):
                if word.lower().strip(",.") in _LEADING_WORDS:
                    offset += len(word) + 1
                else:
                    break
            # What is left must still name something besides the facility word itself.
            rest = span[offset:]
            if re.fullmatch(_FACILITY, rest) or not rest:
                continue
            r.start += offset
            results.append(r)
        return results


# Census first names that are far more often ordinary words or months in a note.
FIRST_NAME_STOP = {"MAY", "JUNE", "APRIL", "AUGUST", "WILL", "HOPE", "GRACE", "BELL", "MARK", "BILL", "FAITH",
                   "JOY", "SUMMER", "GENE", "DEAN", "ROSE", "LONG", "CHANCE", "PAGE", "MAJOR", "SON", "KING",
                   "PATIENT", "CHRISTIAN", "IVY", "DAISY", "CHERRY", "SUNDAY"}


def census_first_names() -> frozenset[str]:
    """US Census 1990 first names shipped in PyPI `names` (MIT), less FIRST_NAME_STOP; empty if the
    package is absent. Read once with the gate's vocabulary (`annotation.phi_vocabulary`, cached)."""
    from annotation.phi_vocabulary import vocabulary

    return vocabulary().firsts


# Function words that the census also lists as first names; capitalised, they start a sentence.
_SENTENCE_WORDS = {"in", "an", "on", "to", "so", "as", "at", "by", "if", "or", "no", "my", "we", "he", "me",
                   "the", "and", "for", "but", "all", "any", "can", "may", "will", "each", "more", "most"}


class FirstNameRecognizer(EntityRecognizer):
    """"Firstname [M.] Surname" where the first word is a census first name: catches the names the
    small spaCy model misses in terse note lines ("Rm 412, Beatrice Holloway, ...")."""

    PATTERN = re.compile(rf"\b(?P<first>[A-Z][a-z]+)(?:\s+[A-Z]\.)?\s+(?P<last>{_CAP})\b")

    def __init__(self):
        super().__init__(supported_entities=[NAME], name="ClinicalFirstNameRecognizer", supported_language="en")

    def load(self) -> None:
        pass

    def analyze(self, text: str, entities: list[str], nlp_artifacts=None) -> list[RecognizerResult]:
        if entities and NAME not in entities:
            return []
        firsts = census_first_names()
        found = []
        for m in self.PATTERN.finditer(text):
            last = m.group("last")
            if m.group("first").upper() not in firsts or allowed(last) or re.fullmatch(_FACILITY, last):
                continue
            # "In Vitro", "In Life with ...": IN is a census first name, and a sentence's first word.
            if m.group("first").lower() in _SENTENCE_WORDS or _heading(m.group("first"), last):
                continue
            if EPONYM_FOLLOWERS.match(text[m.end():m.end() + 40]):
                continue
            found.append(RecognizerResult(NAME, m.start(), m.end(), 0.6,
                                          recognition_metadata={"recognizer_name": self.name}))
        return found


def _heading(first: str, last: str) -> bool:
    """"Many Treatments", "See Eating Well", "Alpha Thalassemias", "Sun Exposure": the census lists
    the first word as a first name, but it is an ordinary English word, and the second one is medical or
    ordinary vocabulary that is not a common surname (`annotation.phi_vocabulary`)."""
    from annotation.phi_vocabulary import name_like, norm, vocabulary

    words = vocabulary().words
    return norm(first) in words and norm(last) in words and not name_like(last)


def clinical_recognizers() -> list[EntityRecognizer]:
    """The recognizers clinalign adds to Presidio (scores: 0.85 labelled value, 0.6 shape only)."""
    i = re.IGNORECASE
    return [
        RegexGroupRecognizer(MRN, [
            (r"\b(?:MRN|MR\s?#|MR\s?No\.?|Med(?:ical)?\.?\s+Rec(?:ord)?\.?\s*(?:#|No\.?|Number)?|"
             r"medical record(?:\s+(?:number|no\.?|#))?|Unit\s+No\.?|Hosp(?:ital)?\s*#|Chart\s*(?:#|No\.?|number))"
             r"\s*(?:is|was)?\s*[:#]?\s*(?P<phi>[A-Z]{0,3}-?\d[\d\-]{3,11}\d)\b", 0.9),
        ], name="ClinicalMrnRecognizer", flags=i),
        RegexGroupRecognizer(RECORD_ID, [
            (r"\b(?:acc(?:oun)?t|account|encounter|enc|visit|FIN|CSN|accession|specimen|order|claim|member|"
             r"policy|subscriber|beneficiary|insurance|Medicare|Medicaid|health plan|case|lab|requisition|"
             r"serial|device|license|licence|DEA|NPI|certificate|ticket|episode|admission|record|subject|study)"
             r"\s*(?:ID|number|no\.?|num|#)?\s*(?:is|was)?\s*[:#]?\s*"
             r"(?P<phi>(?=[A-Z0-9\-]*\d)[A-Z]{0,4}-?\d[A-Z0-9\-]{3,15})\b", 0.85),
        ], name="ClinicalRecordNumberRecognizer", flags=i),
        # Presidio's e-mail recognizer checks the top-level domain against the public-suffix list,
        # so it misses made-up or internal domains; an e-mail-shaped string is PHI either way.
        RegexGroupRecognizer(EMAIL, [
            (r"(?<![\w.+\-])(?P<phi>[\w.+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+)", 0.9),
        ], name="ClinicalEmailRecognizer", flags=0),
        FirstNameRecognizer(),
        RegexGroupRecognizer(SSN, [
            (r"\b(?P<phi>\d{3}-\d{2}-\d{4})\b", 0.85),
            (r"\b(?:SSN|social security(?: number| no\.?)?|SS#)\s*[:#]?\s*(?P<phi>\d{3}[\s\-]?\d{2}[\s\-]?\d{4})\b",
             0.95),
        ], name="ClinicalSsnRecognizer", flags=i),
        RegexGroupRecognizer(PHONE, [
            (r"(?<![\w/])(?P<phi>(?:\+?1[\s.\-])?(?:\(\d{3}\)\s?|\d{3}[\s.\-])\d{3}[\s.\-]\d{4}"
             r"(?:\s?(?:x|ext\.?)\s?\d{1,5})?)(?![\w/])", 0.7),
            (r"\b(?:phone|tel|telephone|cell|mobile|pager|fax(?:ed)?|call(?:ed)?|contact|ph|reached)\b[^.\n\d]{0,30}?"
             r"(?<![\d\-])(?P<phi>\d{3}[\s.\-]\d{4})\b(?![\-/]\d)", 0.6),
            (r"\b(?:pager|beeper|ext(?:ension)?)\.?\s*[:#]?\s*(?P<phi>\d{4,5})\b", 0.6),
        ], name="ClinicalPhoneRecognizer", flags=i),
        RegexGroupRecognizer(DATE, [
            (rf"\b(?P<phi>{_MM}[/\-]{_DD}[/\-]{_YY})\b(?![/\-]\d)", 0.85),
            (rf"\b(?P<phi>(?:19|20)\d\d[/\-.]{_MM}[/\-.]{_DD})\b", 0.85),
            (rf"\b(?P<phi>{_DD}\.{_MM}\.(?:19|20)\d\d)\b", 0.8),
            (rf"\b(?P<phi>(?:{_WEEKDAY},?\s+)?{_MONTH}\s+{_DD}(?:st|nd|rd|th)?(?:,?\s+(?:19|20)\d\d)?)\b", 0.85),
            (rf"\b(?P<phi>{_DD}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}(?:,?\s+(?:19|20)\d\d)?)\b", 0.85),
            (rf"\b(?P<phi>{_MONTH}\s+(?:19|20)\d\d)\b", 0.7),
            (rf"\b{_DATE_CUE}\s*(?:on|of)?\s*[:#]?\s*(?P<phi>{_MM}/{_DD})\b(?!/)", 0.7),
        ], name="ClinicalDateRecognizer", flags=i),
        RegexGroupRecognizer(AGE, [
            (r"\b(?P<phi>\d{2,3})\s*(?:-|\s)?\s*(?:years?|yrs?|y)\s*(?:-|\s)?\s*old\b", 0.85),
            (r"\b(?P<phi>\d{2,3})\s*(?:yo|y/o|y\.o\.?|yrs?\.?|years?)(?![a-z])", 0.8),
            (r"\b(?:age|aged|ages|age:)\s*(?:of\s*)?(?P<phi>\d{2,3})\b", 0.85),
            (r"\b(?P<phi>\d{2,3})(?:M|F)\b(?=[\s,.;)])", 0.6),
            (r"\b(?:in (?:his|her|their) )(?P<phi>(?:nineties|90s|hundreds))\b", 0.7),
        ], name="ClinicalAgeOver89Recognizer", flags=re.IGNORECASE, keep=lambda m: (
            not m.group("phi").isdigit() or _age_over_89(m))),
        RegexGroupRecognizer(ADDRESS, [
            (rf"\b(?P<phi>\d{{1,6}}[A-Z]?\s+(?:[NSEW]\.?\s+)?(?:{_CAP}\s+){{0,3}}{_CAP}\s+{_STREET_SUFFIX}\b\.?"
             rf"(?:,?\s+(?:Apt|Apartment|Unit|Suite|Ste|#)\.?\s*\w+)?"
             rf"(?:,\s*{_CAP}(?:\s+{_CAP}){{0,2}}(?:,\s*{_STATE})?(?:\s+\d{{5}}(?:-\d{{4}})?)?)?)", 0.85),
            (r"\b(?:P\.?\s?O\.?\s+Box|PO Box)\s+\d+\b", 0.85),
            (rf"\b{_CAP}(?:\s+{_CAP}){{0,2}},\s*{_STATE}\s+(?P<phi>\d{{5}}(?:-\d{{4}})?)\b", 0.85),
            (r"\b(?:zip(?:\s*code)?|postal code)\s*[:#]?\s*(?P<phi>\d{5}(?:-\d{4})?)\b", 0.85),
        ], name="ClinicalAddressRecognizer", flags=0),
        HospitalRecognizer(HOSPITAL, [
            (rf"(?P<phi>(?:(?:St\.?|Saint)\s+)?(?:{_CAP}\s+){{1,4}}{_FACILITY}(?:\s+(?:of|at|for)\s+(?:the\s+)?"
             rf"{_CAP}(?:\s+{_CAP}){{0,3}})?)", 0.8),
            (rf"(?P<phi>{_FACILITY}\s+(?:of|at|for)\s+(?:the\s+)?{_CAP}(?:\s+(?:of\s+)?{_CAP}){{0,3}})", 0.75),
        ], name="ClinicalHospitalRecognizer", flags=0),
        RegexGroupRecognizer(NAME, [
            (rf"\b{_NAME_TITLE}\.?\s+(?P<phi>(?:[A-Z]\.\s?)?{_CAP}(?:\s+{_CAP})?)", 0.7),
            (rf"\b(?i:name|patient name|pt name|signed by|attending|resident|physician|PCP|surgeon|assistant|"
             rf"referring provider|provider|NOK|next of kin|emergency contact|spouse|daughter|son|wife|"
             rf"husband|mother|father|sister|brother|guardian|caregiver|proxy|subject)\s*[:\-]\s*(?P<phi>{_CAP}(?:\s+[A-Z]\.)?(?:\s+{_CAP}){{0,2}})",
             0.75),
            (rf"(?P<phi>{_CAP},\s+{_CAP})(?=\s*(?:\(|MRN|DOB|,\s*(?:MRN|DOB)))", 0.7),
        ], name="ClinicalNameRecognizer", flags=0),
    ]


# Presidio's recognizers clinalign keeps; its phone and SSN recognizers are replaced by ours (its
# phone recognizer swallowed an SSN plus the next number; its SSN one rejects well-formed test-like
# numbers such as 123-45-6789 that a note may still contain), and spaCy's DATE_TIME / ORGANIZATION /
# NRP labels fire on doses, durations and abbreviations (BID, ICU), so only PERSON and LOCATION are used.
PRESIDIO_KEEP = ("EmailRecognizer", "UrlRecognizer", "IpRecognizer", "SpacyRecognizer")
PRESIDIO_TO_OURS = {"PERSON": NAME, "LOCATION": LOCATION, "EMAIL_ADDRESS": EMAIL, "URL": URL,
                    "IP_ADDRESS": IP_ADDRESS}

# Clinical vocabulary spaCy's small model tags as a PERSON or LOCATION: drug names (generic and
# brand), field labels and abbreviations, eponyms. Compared case-insensitively, token by token.
DRUG_NAMES = """
acetaminophen tylenol ibuprofen advil motrin naproxen aleve aspirin celecoxib celebrex ketorolac toradol
morphine oxycodone percocet hydrocodone norco vicodin hydromorphone dilaudid fentanyl tramadol methadone
buprenorphine suboxone naloxone narcan gabapentin neurontin pregabalin lyrica duloxetine cymbalta
sertraline zoloft fluoxetine prozac citalopram celexa escitalopram lexapro paroxetine paxil venlafaxine
effexor bupropion wellbutrin mirtazapine remeron trazodone amitriptyline nortriptyline lithium
quetiapine seroquel olanzapine zyprexa risperidone risperdal aripiprazole abilify haloperidol haldol
lorazepam ativan alprazolam xanax clonazepam klonopin diazepam valium zolpidem ambien melatonin
metformin glucophage glipizide glyburide insulin lantus glargine humalog lispro novolog aspart
detemir levemir sitagliptin januvia empagliflozin jardiance dapagliflozin farxiga canagliflozin
semaglutide ozempic wegovy liraglutide victoza dulaglutide trulicity tirzepatide mounjaro pioglitazone
lisinopril enalapril ramipril losartan cozaar valsartan diovan irbesartan olmesartan sacubitril entresto
amlodipine norvasc nifedipine diltiazem cardizem verapamil metoprolol lopressor toprol carvedilol coreg
atenolol propranolol labetalol hydralazine clonidine hydrochlorothiazide hctz chlorthalidone furosemide
lasix bumetanide bumex torsemide spironolactone aldactone eplerenone digoxin lanoxin amiodarone
cordarone sotalol dofetilide flecainide atorvastatin lipitor simvastatin zocor rosuvastatin crestor
pravastatin ezetimibe zetia warfarin coumadin heparin enoxaparin lovenox apixaban eliquis rivaroxaban
xarelto dabigatran pradaxa edoxaban clopidogrel plavix ticagrelor brilinta prasugrel nitroglycerin
isosorbide ranolazine levothyroxine synthroid methimazole prednisone prednisolone methylprednisolone
solumedrol medrol dexamethasone decadron hydrocortisone fludrocortisone omeprazole prilosec
pantoprazole protonix esomeprazole nexium lansoprazole famotidine pepcid ondansetron zofran
metoclopramide reglan prochlorperazine compazine docusate colace senna sennosides bisacodyl dulcolax
polyethylene miralax lactulose loperamide imodium sucralfate amoxicillin augmentin ampicillin
penicillin cephalexin keflex cefazolin ancef ceftriaxone rocephin cefepime cefdinir azithromycin
zithromax clarithromycin doxycycline minocycline ciprofloxacin cipro levofloxacin levaquin
moxifloxacin nitrofurantoin macrobid trimethoprim sulfamethoxazole bactrim clindamycin vancomycin
linezolid daptomycin metronidazole flagyl piperacillin tazobactam zosyn meropenem ertapenem
gentamicin tobramycin rifampin isoniazid fluconazole diflucan nystatin acyclovir valacyclovir valtrex
oseltamivir tamiflu remdesivir paxlovid nirmatrelvir albuterol proventil ventolin ipratropium
atrovent tiotropium spiriva fluticasone flovent advair budesonide symbicort montelukast singulair
cetirizine zyrtec loratadine claritin diphenhydramine benadryl hydroxyzine epinephrine epipen
allopurinol colchicine febuxostat methotrexate hydroxychloroquine plaquenil adalimumab humira
etanercept enbrel infliximab remicade rituximab tamoxifen letrozole anastrozole cisplatin carboplatin
paclitaxel doxorubicin pembrolizumab keytruda nivolumab opdivo trastuzumab herceptin bevacizumab
levetiracetam keppra phenytoin dilantin valproate depakote lamotrigine lamictal carbamazepine
tegretol topiramate topamax sumatriptan donepezil aricept memantine namenda carbidopa levodopa
sinemet ropinirole pramipexole tamsulosin flomax finasteride proscar oxybutynin sildenafil viagra
tadalafil cialis estradiol medroxyprogesterone norethindrone alendronate fosamax calcitriol
ergocalciferol cholecalciferol potassium magnesium ferrous folate cyanocobalamin thiamine
""".split()

FIELD_LABELS = """
mrn dob dos ssn pcp hpi pmh psh ros a&p bid tid qid qhs qd qod prn po iv im sq subq npo sig
icu picu nicu ed er or pacu ccu sicu micu ct cta mri mra ekg ecg echo tte tee cxr kub ua cbc bmp cmp
lft lfts inr ptt bnp troponin hba1c a1c tsh gfr egfr bun nsaid nsaids ace arb ssri snri copd chf cad
ckd esrd dvt pe uti gerd hiv hcv hbv cva tia mi stemi nstemi afib dka hhs ards sirs covid rn np md do
pa cna lpn chief complaint assessment plan allergies nkda medications vitals history impression
name patient pt mr mrs ms miss dr prof md ml mg mcg kg cm mm mmhg rm room bed unit exam findings
comparison procedure diagnosis reason requesting handoff consult note report summary addendum
hgb hemoglobin hct wbc plt sodium potassium creatinine glucose lactate troponin albumin ferritin
niece nephew son daughter wife husband mother father sister brother aunt uncle cousin partner
grandson granddaughter caregiver family friend roommate neighbor guardian proxy hcp
biopsy surgery colonoscopy endoscopy dialysis transfusion chemotherapy radiation ultrasound x-ray
preeclampsia eclampsia sepsis pneumonia asthma diabetes hypertension anemia delirium dementia stroke
dtap tdap hib pcv mmr ipv hpv bcg covid-19 influenza hepatitis varicella zoster
monday tuesday wednesday thursday friday saturday sunday today tomorrow yesterday
lung lungs cancer kidney kidneys stones stone heart liver bone bones brain skin eye eyes breast blood
colon prostate ovarian cervical pancreatic thyroid stomach bladder ear ears nose throat spine hip knee
urine trigger tarsal pulmonary cardiac renal hepatic gastric bowel muscle nerve joint chest back neck
alpha beta gamma delta type acute chronic recurrent primary secondary congenital hereditary familial
""".split()

EPONYMS = """
parkinson parkinson's alzheimer alzheimer's crohn crohn's hodgkin hodgkin's cushing cushing's graves
hashimoto hashimoto's addison addison's bell bell's foley glasgow apgar whipple babinski murphy
murphy's homans kussmaul cheyne stokes barrett barrett's kaposi guillain barre barré tourette
huntington huntington's wernicke korsakoff raynaud raynaud's sjogren sjögren's sjogren's wilson
wilson's marfan down down's turner klinefelter meniere meniere's kawasaki reye reye's lyme
epley valsalva trendelenburg heimlich gram swan ganz hickman broca wells wells' framingham
child-pugh meld nyha killip gleason breslow
""".split()

ALLOW_LIST = frozenset(DRUG_NAMES) | frozenset(FIELD_LABELS) | frozenset(EPONYMS)

# A capitalised word right before one of these is an eponym, not a person ("Bell's palsy").
EPONYM_WORDS = frozenset("""disease syndrome sign palsy catheter scale score criteria test maneuver manoeuvre
procedure lymphoma sarcoma tumor tumour reflex phenomenon node classification triad esophagus ulcer fracture
equation formula rule stage staging operation repair bandage line tube coma deformity anomaly malformation
deficiency dysplasia dystrophy sequence spectrum variant type plus myasthenic anemia anaemia ataxia
encephalopathy neuropathy myopathy cardiomyopathy virus bacteria infection monitor monitoring
diet method technique index""".split())

# Endings of medical terms (Encephalomyelitis, Hemangiomatosis, Aphalangia): such a word is not a name.
MEDICAL_SUFFIX = re.compile(
    r"(?:itis|osis|oses|emia|aemia|opathy|pathy|plasia|plastic|trophy|algia|oma|omas|omatosis|ectomy|otomy|"
    r"ostomy|ology|iasis|genesis|philia|phobia|plegia|rrhea|rrhoea|uria|penia|cytosis|megaly|cele|stasis|"
    r"lysis|sclerosis|phalangia|dactyly|cephaly|gryposis|ism|ine|ide|ate|ase|azole|mab|nib|vir|pril|sartan|"
    r"olol|statin|cillin|mycin|cycline|floxacin|prazole|tidine|dipine|gliptin|gliflozin|glutide|lukast|"
    r"zepam|zolam|barbital|profen|fenac|oxacin|caine|sone|olone|asone|ics|ia)$", re.IGNORECASE)
# Up to two words may come between ("Lambert Eaton myasthenic syndrome", "Coats plus syndrome").
EPONYM_FOLLOWERS = re.compile(r"^[\s\-]*(?:'s\s+)?(?:[\w\-]+\s+){0,2}(?:" + "|".join(sorted(EPONYM_WORDS)) + r")\b",
                              re.IGNORECASE)


# Places that are not identifiers under HIPAA Safe Harbor (states and larger are allowed).
US_STATES = """alabama alaska arizona arkansas california colorado connecticut delaware florida georgia hawaii
idaho illinois indiana iowa kansas kentucky louisiana maine maryland massachusetts michigan minnesota
mississippi missouri montana nebraska nevada ohio oklahoma oregon pennsylvania tennessee texas utah vermont
virginia washington wisconsin wyoming""".split() + ["new hampshire", "new jersey", "new mexico", "new york",
                                                       "north carolina", "north dakota", "rhode island",
                                                       "south carolina", "south dakota", "west virginia"]
LARGE_PLACES = frozenset(US_STATES + """united states usa us america u.s. canada mexico brazil argentina chile
peru colombia europe asia africa australia antarctica oceania china india japan korea russia ukraine germany
france spain italy portugal greece turkey egypt israel iran iraq pakistan bangladesh nigeria kenya ethiopia
ghana uganda finland sweden norway denmark iceland ireland england scotland wales britain uk netherlands
belgium switzerland austria poland hungary romania philippines vietnam thailand indonesia malaysia
singapore haiti cuba jamaica caribbean mediterranean scandinavia latin middle east west africa sudan
suriname guatemala honduras nicaragua venezuela ecuador bolivia paraguay uruguay morocco algeria tunisia
libya somalia tanzania zambia zimbabwe mozambique angola congo cameroon senegal mali niger chad
afghanistan nepal bhutan sri lanka myanmar cambodia laos mongolia taiwan syria lebanon jordan yemen oman
qatar kuwait bahrain ontario quebec alberta manitoba saskatchewan
sub-saharan north south east west central""".split() + ["united kingdom", "united states of america",
                                                        "south africa", "latin america", "middle east",
                                                        "west africa", "east africa", "central america",
                                                        "south america", "north america", "southeast asia",
                                                        "new zealand", "saudi arabia", "puerto rico", "dominican republic",
                                                        "british columbia", "nova scotia", "sri lanka",
                                                        "costa rica", "el salvador", "hong kong"])


def census_names() -> frozenset[str]:
    """First and last names of the US Census 1990 lists (upper case); empty if `names` is absent."""
    from annotation.phi_vocabulary import vocabulary

    return vocabulary().census


def allowed(span_text: str) -> bool:
    """True when every word of a span is clinical vocabulary (so the span is not PHI)."""
    words = [w.strip(".,;:()[]'\"").lower() for w in span_text.split()]
    words = [w for w in words if w]
    return bool(words) and all(w in ALLOW_LIST or w.removesuffix("'s") in ALLOW_LIST for w in words)


def medical_word(word: str) -> bool:
    """A word with a medical or drug ending, and not a census name (Christine, Kate, Maria end alike)."""
    w = word.strip(".,;:()[]'\"")
    return len(w) > 5 and bool(MEDICAL_SUFFIX.search(w)) and w.upper() not in census_names()
