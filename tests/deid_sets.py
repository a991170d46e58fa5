"""Two generated sets that measure a report redactor (``tests/test_deid.py``, ``bench/deid.py``).

``phi_set()``: sentences written as radiology reports carry identifiers (names in signatures,
headers and free text, phone and fax numbers, e-mail and street addresses, dates in many forms,
MRNs, accession numbers), each sample with the identifier strings a redactor must remove.
``clinical_set()``: thousands of chest-CT and OCT sentences with no identifier at all, written to
look like one ("identified", "IDH", "May represent", measurements, vertebral levels, series and
image numbers, dose figures, laterality and dates of nothing): a redactor must leave each unchanged.
Both are made here from word lists (no report text from any data set), in a fixed order.
"""

from __future__ import annotations

import itertools
import random

FIRST = ["Ahmet", "Anna", "John", "Mei", "Olumide", "Gwendolyn", "Lars", "Priya", "José", "Fatma", "Kwame", "Ingrid", "Hiroshi", "Sarah"]
LAST = ["Yilmaz", "Meyer", "Smith", "O'Brien", "Featherstonehaugh", "Okonkwo", "Nguyen", "García", "Kowalski", "Andersson", "Tanaka",
        "Schmidt", "Patel", "MacLeod"]
STREETS = ["Baker Street", "Main St.", "Elm Avenue", "Kings Road", "Harbor Boulevard", "Atatürk Caddesi", "Linden Strasse"]


def phi_set(seed: int = 0) -> list[tuple[str, list[str]]]:
    """``[(text, [identifier strings])]``: about 500 samples, every kind of identifier in several forms."""
    rng = random.Random(seed)
    out: list[tuple[str, list[str]]] = []
    for first, last in itertools.product(FIRST, LAST):
        name = f"{first} {last}"
        day, month, year = rng.randint(1, 28), rng.randint(1, 12), rng.randint(1990, 2025)
        mrn, acc = str(rng.randint(10**6, 10**9)), f"A{rng.randint(10**5, 10**7)}"
        phone = f"{rng.randint(200, 999)}-{rng.randint(200, 999)}-{rng.randint(1000, 9999)}"
        month_name = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November",
                      "December"][month - 1]
        kind = rng.randrange(12)
        if kind == 0:
            out.append((f"Electronically signed by {name}, MD on {day:02d}/{month:02d}/{year}.", [first, last, f"{day:02d}/{month:02d}/{year}"]))
        elif kind == 1:
            out.append((f"Dr. {last}. FINDINGS: No pleural effusion.", [last]))
        elif kind == 2:
            out.append((f"Patient: {name}. MRN: {mrn}. DOB: {year}-{month:02d}-{day:02d}.", [first, last, mrn, f"{year}-{month:02d}-{day:02d}"]))
        elif kind == 3:
            out.append((f"Findings were discussed with Dr {first[0]}. {last} by phone at {phone}.", [last, phone]))
        elif kind == 4:
            out.append((f"Compared with the CT of {month_name} {day}, {year}. Accession no. {acc}.", [f"{month_name} {day}, {year}", acc]))
        elif kind == 5:
            email = f"{first.lower()}.{last.lower().replace(chr(39), '')}@hospital.example.org"
            out.append((f"Questions: {email}, fax: +1 ({rng.randint(200, 999)}) {rng.randint(200, 999)}-{rng.randint(1000, 9999)}.",
                        [email, first.lower()]))
        elif kind == 6:
            street = rng.choice(STREETS)
            out.append((f"Home address {rng.randint(1, 999)} {street}, referred by Prof. {last}.", [street.split()[0], last]))
        elif kind == 7:
            out.append((f"Dictated by: {last.upper()}, {first}. Date {day} {month_name[:3]} {year}.", [last.upper(), first, f"{day} {month_name[:3]} {year}"]))
        elif kind == 8:
            out.append((f"Referring physician: {name}. Exam date {day:02d}.{month:02d}.{year}.", [first, last, f"{day:02d}.{month:02d}.{year}"]))
        elif kind == 9:
            out.append((f"Report read by {name} (pager 4{rng.randint(100000, 999999)}); accession {rng.randint(10**7, 10**8)}.",
                        [first, last]))
        elif kind == 10:
            out.append((f"Mrs. {last} was seen on {day}-{month_name[:3]}-{year}; patient ID {mrn}.", [last, f"{day}-{month_name[:3]}-{year}", mrn]))
        else:
            out.append((f"Tel: 0{rng.randint(200, 999)} {rng.randint(100, 999)} {rng.randint(10, 99)} {rng.randint(10, 99)}. "
                        f"Verified by {first} {last}, FRCR.", [first, last]))
    return out


_SITES = ["right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "lingula", "left lower lobe", "mediastinum",
          "right hilum", "pericardium", "left pleural space", "subcarinal station", "thyroid", "liver dome", "fovea", "temporal macula"]
_FINDINGS = ["nodule", "ground-glass opacity", "consolidation", "pleural effusion", "lymph node", "atelectasis", "bronchiectasis",
             "emphysema", "calcified granuloma", "septal thickening", "drusen", "intraretinal fluid", "subretinal fluid", "epiretinal membrane"]
_TEMPLATES = [
    "No suspicious pulmonary {f} is identified in the {s}.",
    "A {n} mm {f} is identified in the {s} (series {se}, image {im}).",
    "The {f} in the {s} measures {a} x {b} mm, previously {c} x {d} mm.",
    "{F} in the {s} may represent infection; follow-up CT in {m} months is recommended.",
    "May represent a {f}; correlate clinically.",
    "Vertebral bodies from T{v} to L{w} are unremarkable; mild degenerative change at C{u}-C{x}.",
    "IDH mutation status and PD-L1 expression are pending for the {s} {f}.",
    "Short axis of the {s} node is {n} mm, ID-like pattern of {f} not seen.",
    "CTDIvol {g} mGy, DLP {h} mGy*cm; {k} images reviewed at 1.25 mm.",
    "Attenuation {hu} HU; enhancement to {hu2} HU after contrast.",
    "Central subfield thickness {t} µm in the right eye, {t2} µm in the left eye; {f} in the {s}.",
    "Unchanged {f} in the {s} since the prior examination; Fleischner category {cat}.",
    "Stable since {yy} per history; {f} at the {s} with a {pp}% volume increase.",
    "Lung-RADS {lr}; {n} mm solid {f}, {s}.",
    "There is {f} of the {s}, extension {a}-{b} cm beyond the margin.",
    "Right and left main bronchi patent; the {s} shows {f} at the level of the {ord} rib.",
]


def clinical_set(n: int = 4000, seed: int = 0) -> list[str]:
    """``n`` sentences of chest-CT and OCT phrasing that hold no identifier."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        f = rng.choice(_FINDINGS)
        out.append(_TEMPLATES[i % len(_TEMPLATES)].format(
            f=f, F=f[0].upper() + f[1:], s=rng.choice(_SITES), n=rng.randint(2, 40), a=round(rng.uniform(0.5, 9.5), 1),
            b=round(rng.uniform(0.5, 9.5), 1), c=rng.randint(2, 30), d=rng.randint(2, 30), m=rng.choice([3, 6, 12, 18, 24]),
            se=rng.randint(2, 12), im=rng.randint(1, 400), v=rng.randint(1, 12), w=rng.randint(1, 5), u=rng.randint(2, 6),
            x=rng.randint(3, 7), g=round(rng.uniform(1, 30), 2), h=rng.randint(50, 1500), k=rng.randint(100, 900),
            hu=rng.randint(-900, 80), hu2=rng.randint(20, 250), t=rng.randint(180, 600), t2=rng.randint(180, 600),
            cat=rng.choice(["1", "2", "3", "4A", "4B"]), yy=rng.choice(["childhood", "the last study", "surgery"]),
            pp=rng.randint(5, 90), lr=rng.choice(["2", "3", "4A", "4B", "4X"]), ord=rng.choice(["fourth", "sixth", "ninth"])))
    return out
