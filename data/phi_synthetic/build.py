"""Build notes.jsonl and clean.jsonl from the marked-up synthetic notes below.

Every note was written for clinalign; every name, number, date, address and facility is invented.
Markup: `{TYPE|text}` marks one gold identifier; the builder strips it and records the offsets.
Run: python data/phi_synthetic/build.py   (rewrites both files; deterministic)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
MARK = re.compile(r"\{([A-Z_]+)\|([^{}]+)\}")

NOTES = [
    # 1 ED triage
    "ED TRIAGE NOTE\nPatient: {NAME|Harold Weintraub}   MRN: {MRN|00483921}   DOB: {DATE|04/17/1941}\n"
    "Arrived by EMS from home at {ADDRESS|2217 Larkspur Lane, Dayton, OH 45409} with 2 days of productive "
    "cough and fever to 38.9 C. Wife ({NAME|Ruth Weintraub}) at bedside, reachable at {PHONE|(937) 555-0148}. "
    "PCP: Dr. {NAME|Anil Kapoor}. Allergies: penicillin (rash).",
    # 2 discharge summary
    "DISCHARGE SUMMARY\nAdmission date: {DATE|March 3, 2024}   Discharge date: {DATE|March 9, 2024}\n"
    "Ms. {NAME|Delphine Okafor} is a {AGE|93}-year-old woman with HFrEF (EF 25%), CKD stage 3b and "
    "paroxysmal atrial fibrillation admitted to {HOSPITAL|Riverside Regional Medical Center} with acute "
    "decompensated heart failure. She diuresed 6 L on IV furosemide. Discharged to {HOSPITAL|Maple Grove "
    "Nursing Home} on furosemide 40 mg PO BID, metoprolol succinate 50 mg daily, apixaban 2.5 mg BID.",
    # 3 telephone encounter
    "Telephone encounter {DATE|11/02/2023} 14:20. Daughter {NAME|Carla Mendes} called from "
    "{PHONE|617-555-0193} asking whether her father may take ibuprofen for knee pain while on warfarin. "
    "Advised acetaminophen up to 3 g/day instead; INR check Thursday. Pt MRN {MRN|7729104}.",
    # 4 clinic note, address + SSN on a registration line
    "REGISTRATION: {NAME|Tomasz Nowicki}, SSN {SSN|219-44-8812}, {ADDRESS|48 Birchwood Avenue, Apt 3C, "
    "Scranton, PA 18503}, home {PHONE|570.555.0121}, email {EMAIL|tnowicki48@examplemail.com}.\n"
    "CC: follow-up of type 2 diabetes. A1c 8.1% on metformin 1000 mg BID. Start empagliflozin 10 mg daily.",
    # 5 progress note with age > 89 in shorthand
    "Progress note - hospital day 3\n{AGE|91} yo F with hx of hip fracture s/p ORIF on {DATE|12/28/2023}, now "
    "with delirium. Seen by geriatrics (Dr. {NAME|Yvonne Castellanos}). Hold zolpidem, continue melatonin 3 mg "
    "qHS. Encounter # {RECORD_ID|E20240102-5531}.",
    # 6 radiology report
    "RADIOLOGY REPORT\nPatient Name: {NAME|Bertrand Lefevre}   Accession #: {RECORD_ID|RAD-8841207}\n"
    "Exam: CT abdomen/pelvis with contrast, {DATE|2024-01-15}\nFindings: 2.3 cm hypodense lesion in hepatic "
    "segment 7, likely a simple cyst. No free air. Comparison: outside study from {HOSPITAL|Lakeview "
    "Community Hospital}.",
    # 7 pathology
    "Surgical pathology. Specimen #: {RECORD_ID|S24-01877}. Received {DATE|Feb 6, 2024} from the OR. "
    "Right colon, hemicolectomy: moderately differentiated adenocarcinoma invading the muscularis propria "
    "(pT2), 0/18 lymph nodes. Signed by: {NAME|Miriam Goldfarb}, MD.",
    # 8 social history with location
    "SOCIAL HISTORY: Retired machinist, lives alone in {LOCATION|Bakersfield} with a cat. Son "
    "{NAME|Dwayne Pruitt} visits weekly and can be reached at {PHONE|661-555-0177}. Former smoker, 40 "
    "pack-years, quit 2010. No alcohol.",
    # 9 consult note
    "GI CONSULT\nRequesting physician: {NAME|Samuel Adeyemi}, MD. Reason: melena. {NAME|Gloria Ybarra} is a "
    "{AGE|96}-year-old with aortic stenosis on aspirin and clopidogrel. Hgb 6.8 from 9.9 on "
    "{DATE|June 4th}. Plan: EGD tomorrow, pantoprazole 40 mg IV BID, transfuse 1 unit PRBC.",
    # 10 insurance
    "Prior authorization request for adalimumab 40 mg SC every 2 weeks. Member ID: {RECORD_ID|XKW448120937}. "
    "Diagnosis: moderate-to-severe Crohn's disease failing azathioprine. Patient {NAME|Lucia Benedetti}, "
    "DOB {DATE|9/23/1987}. Fax decision to {PHONE|(212) 555-0109}.",
    # 11 ICU note
    "MICU attending note {DATE|01/19/2024}: Mr. {NAME|Okonkwo} remains intubated on PRVC, FiO2 40%, PEEP 8. "
    "Norepinephrine weaned to 0.04 mcg/kg/min. Cultures from {DATE|1/17} grew MSSA; switch vancomycin to "
    "cefazolin 2 g q8h. Family meeting with his wife {NAME|Adaeze Okonkwo} at 3 pm.",
    # 12 pediatric
    "Well-child visit. {NAME|Mateo Quispe}, 18 months, here with mother {NAME|Rosa Quispe}. Immunizations "
    "given: DTaP, Hib, PCV. Growth along 40th percentile. Next visit {DATE|August 12, 2024}. Home: "
    "{ADDRESS|915 Cedar Ridge Road, Fresno, CA 93722}.",
    # 13 OB
    "Prenatal visit, G2P1 at 28w3d. EDD {DATE|05/30/2024}. BP 118/72, fundal height 28 cm, FHR 142. "
    "Glucose challenge 148 -> 3-hour GTT ordered. Delivering at {HOSPITAL|St. Agnes Women's Hospital}. "
    "Partner {NAME|Kenji Watanabe} present.",
    # 14 nursing handoff
    "Handoff: Rm 412, {NAME|Beatrice Holloway}, {AGE|102} y/o, DNR/DNI, comfort-focused care. Morphine "
    "2 mg IV q2h PRN dyspnea. Niece is HCP: {NAME|Janelle Holloway}, cell {PHONE|404-555-0135}.",
    # 15 referral letter
    "Dear Dr. {NAME|Feldman},\nThank you for seeing {NAME|Ignatius Murray} (DOB {DATE|February 2, 1950}, "
    "MRN {MRN|MC-55120833}) for evaluation of a 4 cm abdominal aortic aneurysm found incidentally. "
    "Please send your recommendations to {EMAIL|vascular.referrals@northfieldclinic.org}.\nSincerely,\n"
    "{NAME|Priya Raman}, MD, {HOSPITAL|Northfield Family Clinic}",
    # 16 psych
    "Psychiatry intake. Pt is a 34-year-old man referred after an overdose of sertraline on {DATE|10/07/2023}. "
    "Lives with roommate at {ADDRESS|3301 W Division Street, Chicago, IL 60651}. Denies current SI. Start "
    "escitalopram 10 mg daily; safety plan reviewed. Emergency contact: {NAME|Marisol Vega} {PHONE|773-555-0166}.",
    # 17 lab
    "LAB RESULT NOTIFICATION\nPatient: {NAME|Vernon Tillery}  Chart #: {MRN|448-2291}\nCollected "
    "{DATE|4/2/24} 07:45. Potassium 6.1 mmol/L (H), creatinine 2.4 mg/dL. Called patient at "
    "{PHONE|555-0182}; instructed to go to the ED.",
    # 18 operative note
    "OPERATIVE NOTE\nDate of surgery: {DATE|22 January 2024}\nSurgeon: {NAME|Helena Marchetti}, MD. "
    "Assistant: {NAME|Omar Haddad}, PA-C. Procedure: laparoscopic cholecystectomy. EBL 20 mL. Patient "
    "tolerated the procedure well and was taken to PACU in stable condition.",
    # 19 very old patient, several age forms
    "HPI: {NAME|Eleanor Whitcombe} is a pleasant woman aged {AGE|97} who presents with a fall at home. She "
    "lives at {HOSPITAL|Sunrise Senior Care Center}. No LOC. On apixaban. CT head negative for bleed.",
    # 20 ED discharge instructions
    "Discharge instructions for {NAME|Rahul Mehta}: take amoxicillin-clavulanate 875 mg twice daily for 7 days. "
    "Return if fever above 101 F. Follow up with {HOSPITAL|Bayview Urgent Care} on {DATE|Monday, May 6}. "
    "Questions: {PHONE|1-415-555-0199}.",
    # 21 SNF transfer
    "Transfer form: {NAME|Walter Brzezinski}, {AGE|94}M, from {HOSPITAL|Good Samaritan Hospital} to "
    "{HOSPITAL|Willow Creek Rehabilitation Center}. Medicare ID {RECORD_ID|1EG4TE5MK72}. Diet: dysphagia "
    "level 2. Code status: full.",
    # 22 email-style message
    "Patient portal message received {DATE|12/14/2023} from {EMAIL|jun.park1979@mailbox.example}: \"My "
    "blood pressure readings this week were 150/95 on lisinopril 20 mg. Should I increase it?\" Replied: "
    "increase to 40 mg daily, recheck BMP in 1 week. -- {NAME|Lauren Ashby}, NP",
    # 23 oncology
    "Oncology follow-up. {NAME|Ferdinand Osei}, MRN# {MRN|90031557}. Cycle 4 of FOLFOX completed "
    "{DATE|3/18/2024}. Grade 1 neuropathy. CEA down to 4.2. Next cycle at {HOSPITAL|Hopewell Cancer Center}.",
    # 24 ophthalmology
    "Ophthalmology: {NAME|Agnes Thornbury}, {AGE|90} years old, 6 weeks after cataract surgery OD. VA 20/30. "
    "IOP 16/17. Continue prednisolone acetate drops taper. Account number {RECORD_ID|ACC-3370915}.",
    # 25 home health
    "Home health visit at {ADDRESS|77 Harbor View Drive, Portland, ME 04101}. Wound on L heel, stage 3, "
    "4 x 3 cm, granulating. Dressing changed. Caregiver {NAME|Thomas Bergeron} reports good appetite.",
    # 26 allergy clinic
    "Allergy clinic {DATE|Sept 9, 2023}. {NAME|Naomi Achterberg} reacted to cefuroxime with hives. Skin "
    "testing to penicillin negative; oral amoxicillin challenge tolerated. Penicillin allergy removed. "
    "Note faxed to {PHONE|503-555-0157}.",
    # 27 cardiology with IP (device upload)
    "Device clinic: ICD interrogation uploaded from home monitor IP {IP_ADDRESS|192.168.14.207}. Patient "
    "{NAME|Gunnar Lindqvist}, device serial {RECORD_ID|PRM-552190X}. No therapies delivered since "
    "{DATE|11/30/2023}. Battery 7.5 years.",
    # 28 neuro
    "Neurology: {NAME|Ines Carvalho}, a 52-year-old right-handed woman, with new left arm weakness since "
    "the {DATE|14th of January}. MRI brain showed a right MCA territory infarct. Started atorvastatin 80 mg "
    "and aspirin 81 mg. Referred to {HOSPITAL|Mercy Stroke Clinic}.",
    # 29 billing
    "Billing note: claim # {RECORD_ID|CLM-20240311-0042} denied; resubmitting with modifier 25. "
    "Patient {NAME|Reginald Foxworth}, {ADDRESS|PO Box 4471}, {LOCATION|Tulsa}, OK. DOS {DATE|02/27/2024}.",
    # 30 dentistry / misc
    "Dental clearance requested before bisphosphonate therapy for {NAME|Svetlana Orlova} (DOB "
    "{DATE|7/4/1939}), age 84. Contact her dentist at "
    "{EMAIL|frontdesk@smilecraftdental.example}.",
    # 31 name list format
    "Patient: {NAME|Baptiste, Corinne} (MRN {MRN|3318840}). Seen on {DATE|10/15/2023} for "
    "hypothyroidism; TSH 6.8. Increase levothyroxine from 75 to 88 mcg daily.",
    # 32 ICU family
    "Palliative care consult. Mr. {NAME|Ezekiel Banda}, {AGE|99}, end-stage COPD. Goals of care discussed "
    "with son {NAME|Kwame Banda} and granddaughter {NAME|Abena Banda}. Transition to hospice at "
    "{HOSPITAL|Peaceful Pines Hospice}.",
    # 33 outside records
    "Outside records from {HOSPITAL|Hospital of the University of Westbrook} reviewed: colonoscopy "
    "{DATE|August 2022} with two tubular adenomas. Repeat due 2025.",
    # 34 vaccination
    "Immunization record for {NAME|Priscilla Nakamura}: influenza vaccine {DATE|10/03/2023}, COVID-19 "
    "booster {DATE|10/03/2023}, Tdap {DATE|5/11/2019}. Lot numbers on file.",
    # 35 ED note with SSN shorthand
    "Unidentified male brought in by police, later identified as {NAME|Darnell Whitaker} (SS# "
    "{SSN|401 38 2290}). BAL 0.21. CT head negative. Observed overnight; CIWA protocol with lorazepam.",
    # 36 urology
    "Urology: PSA 9.4 on {DATE|01/08/2024}, up from 6.1. MRI prostate PI-RADS 4 lesion. Biopsy scheduled "
    "at {HOSPITAL|Eastgate Surgical Center}. Pt {NAME|Lionel Abernathy} agrees. Call {PHONE|(314) 555-0130} "
    "with time.",
    # 37 nursing home
    "Nursing home monthly note: {NAME|Hilda Sorensen} ({AGE|95}-year-old) stable weight, no falls. "
    "Donepezil 10 mg nightly. Resident of room 22B at {HOSPITAL|Oak Hollow Care Center}, "
    "{ADDRESS|1200 Pine Street, Eau Claire, WI 54701}.",
    # 38 research screening
    "Screening log: subject {NAME|Moses Fairbanks}, record number {RECORD_ID|RN-0088123}, excluded "
    "(eGFR 24). Screened {DATE|Nov 20, 2023} by {NAME|Paula Zhou}, CRC.",
    # 39 transplant
    "Transplant clinic. {NAME|Arjun Venkataraman} is 8 months after deceased-donor kidney transplant "
    "({DATE|April 11, 2023}). Tacrolimus trough 7.2. Creatinine 1.3. Continue mycophenolate 720 mg BID.",
    # 40 contact block
    "Advance directive on file. Health care proxy: {NAME|Bernadette Callahan}, {ADDRESS|19 Orchard Hill "
    "Road, Northampton, MA 01060}, {PHONE|413-555-0114}, {EMAIL|bcallahan@proxymail.example}.",
]

CLEAN = [
    "Assessment and plan: 67-year-old with community-acquired pneumonia, CURB-65 score 2. Start ceftriaxone "
    "1 g IV daily plus azithromycin 500 mg daily. Repeat chest x-ray in 6 weeks.",
    "HPI: 45-year-old woman with 3 days of dysuria and urinary frequency, no fever or flank pain. UA positive "
    "for nitrites. Nitrofurantoin 100 mg BID for 5 days.",
    "Patient reports chest pain for 2 hours, substernal, radiating to the left arm. ECG shows ST elevation in "
    "leads II, III and aVF. Activate cath lab; aspirin 325 mg chewed, heparin bolus.",
    "Medications: lisinopril 10 mg daily, atorvastatin 40 mg nightly, metformin 500 mg twice daily, "
    "Eliquis 5 mg BID, Lasix 20 mg in the morning, Percocet 5/325 one tab q6h PRN.",
    "Exam: alert and oriented x3. Lungs with bibasilar crackles. 2+ pitting edema to the knees. JVP 12 cm. "
    "Heart regular, 3/6 systolic murmur at the right upper sternal border.",
    "The patient has Parkinson's disease treated with carbidopa-levodopa 25/100 three times daily and a "
    "history of Bell's palsy in 2015. Glasgow Coma Scale 15.",
    "Plan: Foley catheter removed this morning. Ambulating with PT. Advance diet as tolerated. Anticipate "
    "discharge in 1-2 days if tolerating oral intake.",
    "Labs: sodium 131, potassium 3.4, chloride 98, bicarbonate 22, BUN 28, creatinine 1.6, glucose 212. "
    "Hemoglobin 10.2, platelets 188. INR 2.8 on warfarin.",
    "Wells score for DVT is 3 (high probability). Duplex ultrasound of the right leg ordered. Enoxaparin "
    "1 mg/kg SC q12h pending results.",
    "Pediatric asthma action plan: albuterol 2 puffs every 4 hours as needed; fluticasone 44 mcg 2 puffs "
    "twice daily. Return if using albuterol more than every 4 hours.",
    "Stage IIIA non-small cell lung cancer. Plan concurrent chemoradiation with carboplatin and paclitaxel, "
    "followed by durvalumab consolidation for 12 months.",
    "The 78-year-old man with Alzheimer's disease on donepezil was brought by his family for worsening "
    "agitation at night. Avoid benzodiazepines; trial of melatonin.",
    "Diabetic foot exam: monofilament sensation absent at 4 of 10 sites bilaterally. No ulcers. Dorsalis "
    "pedis pulses 1+. Refer to podiatry.",
    "Post-op day 2 after total knee arthroplasty. Pain controlled with acetaminophen and oxycodone 5 mg "
    "q4h PRN. Hgb stable. Continue aspirin 81 mg BID for VTE prophylaxis for 35 days.",
    "MRI lumbar spine: L4-L5 broad-based disc bulge with moderate foraminal narrowing. No cord compression. "
    "Recommend physical therapy and NSAIDs for 6 weeks.",
    "Sepsis bundle: lactate 3.1, blood cultures x2 drawn before antibiotics, 30 mL/kg crystalloid given. "
    "Piperacillin-tazobactam 4.5 g IV q6h started within the hour.",
    "Patient counseled on smoking cessation for 10 minutes. Started varenicline 0.5 mg daily for 3 days, then "
    "twice daily. Quit date set for next week.",
    "Echo: EF 35-40%, moderate mitral regurgitation, RVSP 45 mmHg. Add sacubitril-valsartan 24/26 mg BID "
    "once off lisinopril for 36 hours.",
    "Thyroid nodule 1.8 cm, TI-RADS 4. Fine-needle aspiration recommended. TSH normal.",
    "Acute gout flare of the first MTP joint. Colchicine 1.2 mg then 0.6 mg one hour later. Start "
    "allopurinol 100 mg daily after the flare resolves; target uric acid below 6.",
    "A 90-day supply of metformin was sent to the pharmacy. Blood pressure 128/76, heart rate 72, "
    "temperature 36.8 C, SpO2 97% on room air.",
    "Hypertensive urgency: BP 196/112 without end-organ damage. Oral labetalol 200 mg; recheck in 1 hour. "
    "Outpatient follow-up in 1 week.",
    "Cushing's syndrome workup: late-night salivary cortisol elevated twice. Dexamethasone suppression "
    "test ordered. Refer to endocrinology.",
    "Child-Pugh class B cirrhosis, MELD 14. Continue lactulose titrated to 2-3 soft stools daily and "
    "rifaximin 550 mg BID. EGD for variceal screening.",
    "Flu season reminder: all patients over 6 months should receive the influenza vaccine unless "
    "contraindicated. Document refusals in the chart.",
    "Preeclampsia with severe features at 34 weeks. Magnesium sulfate for seizure prophylaxis; betamethasone "
    "12 mg IM x2 doses 24 hours apart; plan delivery.",
    "CT angiogram negative for pulmonary embolism. D-dimer was elevated at 1.2. Symptoms likely "
    "musculoskeletal; ibuprofen 400 mg TID with food for 5 days.",
    "Hospital course was uncomplicated. The patient was transferred from the ICU to the medical floor on "
    "day 2 and discharged home on day 5 with home oxygen 2 L.",
    "Crohn's disease in remission on infliximab 5 mg/kg every 8 weeks. Fecal calprotectin 45. Continue "
    "current therapy; colonoscopy due next year.",
    "Atrial fibrillation with RVR, rate 140s. Diltiazem 10 mg IV push then drip at 5 mg/h. CHA2DS2-VASc 4: "
    "start apixaban 5 mg BID.",
    "Low back pain for 3 weeks without red flags. Reassurance, heat, activity as tolerated, naproxen 500 mg "
    "BID for 7 days. Return if weakness or bladder symptoms.",
    "Hodgkin lymphoma survivor, treated with ABVD 12 years ago. Annual echo and thyroid function tests "
    "recommended for late effects.",
    "Kidney function: eGFR 38 mL/min/1.73 m2, urine albumin-to-creatinine ratio 310 mg/g. Add dapagliflozin "
    "10 mg daily. Avoid NSAIDs.",
    "Anaphylaxis after peanut exposure: epinephrine 0.3 mg IM given by EMS. Observed 6 hours. Prescribed "
    "EpiPen two-pack and allergy referral.",
    "Nutrition: BMI 17.2, albumin 2.9. Start oral supplements three times daily; calorie count for 72 hours; "
    "dietitian to follow.",
    "Heart failure education: daily weights, 2 g sodium diet, fluid limit 1.5 L. Call the clinic if weight "
    "increases by more than 1 kg in a day or 2 kg in a week.",
    "Mammogram BI-RADS 0, additional views needed. Ultrasound shows a 9 mm simple cyst. BI-RADS 2, routine "
    "screening in 1 year.",
    "Dose adjustment: vancomycin trough 22 mcg/mL, above goal of 15-20. Reduce to 1 g q12h and recheck "
    "before the fourth dose.",
    "Cardiac rehabilitation phase II, 36 sessions over 12 weeks, three times weekly. Target heart rate "
    "110-125 bpm. Patient motivated.",
    "Insulin regimen: glargine 22 units at bedtime, lispro 6 units with meals plus correction scale. "
    "Hypoglycemia protocol reviewed with the patient and his wife.",
]


def parse(marked: str) -> tuple[str, list[dict]]:
    text, spans, pos = "", [], 0
    for m in MARK.finditer(marked):
        text += marked[pos:m.start()]
        start = len(text)
        text += m.group(2)
        spans.append({"start": start, "end": len(text), "type": m.group(1)})
        pos = m.end()
    text += marked[pos:]
    return text, spans


def main() -> None:
    rows = []
    for i, marked in enumerate(NOTES, start=1):
        text, spans = parse(marked)
        rows.append({"id": f"syn-{i:03d}", "text": text, "spans": spans})
    (HERE / "notes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    clean = [{"id": f"clean-{i:03d}", "text": t, "spans": []} for i, t in enumerate(CLEAN, start=1)]
    (HERE / "clean.jsonl").write_text("".join(json.dumps(r) + "\n" for r in clean))
    n = sum(len(r["spans"]) for r in rows)
    print(f"{len(rows)} notes with {n} gold identifiers, {len(clean)} clean notes")


if __name__ == "__main__":
    main()
