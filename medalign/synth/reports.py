"""Free-text radiology reports for phantom studies: varied phrasing for present findings,
negated mentions for absent ones, FINDINGS and IMPRESSION sections."""

from __future__ import annotations

import numpy as np


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _ct_present(name: str, d: dict, rng: np.random.Generator) -> str:
    if name == "pleural effusion":
        sides = d["sides"]
        where = "bilateral" if len(sides) == 2 else sides[0]
        plural = "s" if len(sides) == 2 else ""
        article = "" if plural else "a "
        return _pick(rng, [
            f"There {'are' if plural else 'is'} {article}{d['size']} {where} pleural effusion{plural}.",
            f"{where.capitalize()} pleural fluid is seen, {d['size']} in amount.",
            f"{d['size'].capitalize()} {where} pleural effusion{plural} with adjacent compressive change.",
        ])
    if name == "cardiomegaly":
        return _pick(rng, ["Cardiomegaly.", "The heart is enlarged.", "Cardiac enlargement is present.", "There is cardiomegaly."])
    if name == "lung nodule":
        ns = d["nodules"]
        big = max(ns, key=lambda n: n["size_mm"])
        if len(ns) == 1:
            return _pick(rng, [
                f"A {big['size_mm']} mm nodule in the {big['lobe']}.",
                f"Solid pulmonary nodule measuring {big['size_mm']} mm in the {big['lobe']}.",
                f"There is a {big['size_mm']} mm lung nodule in the {big['lobe']}.",
            ])
        return _pick(rng, [
            f"There are {len(ns)} pulmonary nodules, the largest measuring {big['size_mm']} mm in the {big['lobe']}.",
            f"Multiple lung nodules, up to {big['size_mm']} mm ({big['lobe']}).",
        ])
    if name == "emphysema":
        return _pick(rng, [
            f"{d['grade'].capitalize()} centrilobular emphysema.",
            f"Emphysematous changes with bullae in both upper lobes, {d['grade']}.",
            f"There is {d['grade']} emphysema with scattered bullae.",
        ])
    if name == "consolidation":
        return _pick(rng, [
            f"Consolidation in the {d['lobe']}.",
            f"There is airspace consolidation in the {d['lobe']}.",
            f"Dense consolidation is seen in the {d['lobe']}.",
        ])
    raise KeyError(name)


CT_ABSENT = {
    "pleural effusion": ["No pleural effusion.", "There is no pleural effusion.", "No pleural fluid is seen.", "Pleural spaces are clear."],
    "cardiomegaly": ["Heart size is normal.", "No cardiomegaly.", "The heart is not enlarged."],
    "lung nodule": ["No pulmonary nodules.", "No suspicious lung nodule is identified.", "There is no nodule."],
    "emphysema": ["No emphysema.", "There is no evidence of emphysema.", "Lung parenchyma without emphysema."],
    "consolidation": ["No consolidation.", "No focal consolidation.", "The lungs are free of consolidation."],
}
CT_FILLER = [
    "The trachea and main bronchi are patent.",
    "Mediastinal structures are unremarkable.",
    "No pneumothorax.",
    "Osseous structures are intact.",
    "The thoracic aorta is of normal caliber.",
    "No mediastinal lymphadenopathy.",
]
CT_IMPRESSION_NORMAL = ["No acute cardiopulmonary abnormality.", "Unremarkable chest CT.", "No significant abnormality."]


def ct_report(labels: dict[str, int], details: dict[str, dict], rng: np.random.Generator) -> str:
    """A FINDINGS/IMPRESSION report consistent with ``labels``."""
    sentences = [_ct_present(n, details[n], rng) if labels[n] else _pick(rng, CT_ABSENT[n]) for n in labels]
    sentences += list(rng.choice(CT_FILLER, size=int(rng.integers(1, 4)), replace=False))
    rng.shuffle(sentences)
    present = [n for n in labels if labels[n]]
    if present:
        impression = " ".join(_ct_present(n, details[n], rng) for n in present)
    else:
        impression = _pick(rng, CT_IMPRESSION_NORMAL)
    return f"FINDINGS: {' '.join(sentences)}\n\nIMPRESSION: {impression}"


OCT_PRESENT = {
    "drusen": ["Multiple drusen beneath the RPE.", "Scattered drusen are present.", "There are soft drusen elevating the RPE."],
    "subretinal fluid": ["Subretinal fluid is present in the macula.", "There is subretinal fluid under the fovea.", "Shallow subretinal fluid."],
    "intraretinal cysts": ["Intraretinal cysts in the inner nuclear layer.", "There are intraretinal cystoid spaces.", "Cystoid macular edema with intraretinal cysts."],
    "epiretinal membrane": ["Epiretinal membrane with mild retinal thickening.", "There is an epiretinal membrane.", "A hyperreflective epiretinal membrane is seen."],
}
OCT_ABSENT = {
    "drusen": ["No drusen.", "There are no drusen."],
    "subretinal fluid": ["No subretinal fluid.", "There is no subretinal fluid."],
    "intraretinal cysts": ["No intraretinal cysts.", "No intraretinal fluid or cysts."],
    "epiretinal membrane": ["No epiretinal membrane.", "There is no epiretinal membrane."],
}


def oct_report(labels: dict[str, int], rng: np.random.Generator) -> str:
    """An OCT report consistent with ``labels``."""
    sentences = [_pick(rng, OCT_PRESENT[n] if labels[n] else OCT_ABSENT[n]) for n in labels]
    sentences.append(_pick(rng, ["Foveal contour is preserved.", "The choroid is unremarkable.", "Vitreoretinal interface otherwise normal."]))
    rng.shuffle(sentences)
    present = [n for n in labels if labels[n]]
    impression = " ".join(_pick(rng, OCT_PRESENT[n]) for n in present) if present else "Normal macular OCT."
    return f"FINDINGS: {' '.join(sentences)}\n\nIMPRESSION: {impression}"
