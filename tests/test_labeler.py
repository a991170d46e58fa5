"""The report labeler: negation, uncertainty, sections, and agreement with phantom ground truth."""

from __future__ import annotations

import csv

import pytest

from medalign.reports.labeler import ReportLabeler
from medalign.reports.report_text import clean_report, split_sections, split_sentences
from medalign.reports.vocabulary import load_vocabulary

CT = load_vocabulary("chest_ct")
LAB = ReportLabeler(CT)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("No pleural effusion.", {"pleural effusion": 0}),
        ("Small right pleural effusion.", {"pleural effusion": 1}),
        ("No pleural effusion, pneumothorax, or consolidation.", {"pleural effusion": 0, "consolidation": 0}),
        ("No emphysema. There is consolidation in the left lower lobe.", {"emphysema": 0, "consolidation": 1}),
        ("No emphysema but there is consolidation.", {"emphysema": 0, "consolidation": 1}),
        ("Possible small nodule in the right upper lobe.", {"lung nodule": -1}),
        ("A nodule cannot be excluded.", {"lung nodule": -1}),
        ("No change in the right pleural effusion.", {"pleural effusion": 1}),
        ("Heart size is normal.", {"cardiomegaly": 0}),
        ("The heart is not enlarged.", {"cardiomegaly": 0}),
        ("The heart is enlarged.", {"cardiomegaly": 1}),
        ("There are 2 pulmonary nodules, the largest measuring 3.5 mm.", {"lung nodule": 1}),
        ("Pleural effusion is absent.", {"pleural effusion": 0}),
        ("Emphysematous changes.", {"emphysema": 1}),
        ("Pleural effusion-thickening was not detected.", {"pleural effusion": 0}),
        ("Heart contour and size are normal.", {"cardiomegaly": 0}),
        ("The heart is mildly enlarged.", {"cardiomegaly": 1}),
        ("Increased cardiothoracic ratio.", {"cardiomegaly": 1}),
        ("There is no pleural or pericardial effusion.", {"pleural effusion": 0, "pericardial effusion": 0}),
        ("Small pericardial effusion.", {"pericardial effusion": 1}),
        ("Lungs: clear, no consolidation, effusion or pneumothorax.", {"consolidation": 0, "pleural effusion": 0}),
        ("No evidence of pulmonary nodules or masses.", {"lung nodule": 0}),
    ],
)
def test_sentence_labels(text, expected):
    got = {k: v for k, v in LAB.label(text).items() if v is not None}
    assert got == expected


def test_negation_does_not_cross_sentences():
    assert LAB.label("No pneumothorax. Pleural effusion on the left.")["pleural effusion"] == 1


def test_positive_mention_wins_over_negated():
    assert LAB.label("FINDINGS: No pleural effusion on the left. IMPRESSION: Right pleural effusion.")["pleural effusion"] == 1


def test_sections_and_sentences():
    text = "FINDINGS: Lungs clear.\nNodule 3.5 mm.\n\nIMPRESSION: Normal."
    s = split_sections(text)
    assert s == {"findings": "Lungs clear.\nNodule 3.5 mm.", "impression": "Normal.", "other": ""}
    assert split_sentences(s["findings"]) == ["Lungs clear", "Nodule 3.5 mm"]
    assert split_sections("Conclusion: fine")["impression"] == "fine"
    assert split_sections("no headers here")["findings"] == "no headers here"


@pytest.mark.parametrize(
    "text, findings, impression, other",
    [
        # headers alone on their line, no colon; numbered impression; a title line before them
        ("CT CHEST WITHOUT CONTRAST\nFindings\nSmall right effusion.\nImpression\n1. Effusion.\n2. No nodule.",
         "Small right effusion.", "1. Effusion.\n2. No nodule.", ""),
        # request, method and comparison kept apart from what is seen
        ("CLINICAL HISTORY: Cough, evaluate for pneumonia.\nTECHNIQUE: Axial CT.\nCOMPARISON: 2024-01-02.\n"
         "FINDINGS: Clear lungs.\nIMPRESSION: Normal.", "Clear lungs.", "Normal.", "Cough, evaluate for pneumonia. Axial CT. 2024-01-02."),
        # dashes, lower case, other names for the two sections, an addendum
        ("results - mild emphysema. interpretation - emphysema. Addendum: also a 4 mm nodule.",
         "mild emphysema.", "emphysema. also a 4 mm nodule.", ""),
        ("Reason for exam: trauma. Report: No fracture. Final impression: Negative.", "No fracture.", "Negative.", "trauma."),
        # no headers at all: the whole text is the findings; the word "history" inside a sentence is no header
        ("No history of surgery. Lungs are clear.", "No history of surgery. Lungs are clear.", "", ""),
    ],
)
def test_section_variants(text, findings, impression, other):
    assert split_sections(text) == {"findings": findings, "impression": impression, "other": other}


def test_labels_ignore_history_indication_and_comparison():
    text = ("INDICATION: Known pleural effusion, follow-up of consolidation.\nHISTORY: Emphysema.\n"
            "FINDINGS: No pleural effusion. No consolidation.\nIMPRESSION: Resolved effusion.")
    labels = LAB.label(text)
    assert labels["pleural effusion"] == 0 and labels["consolidation"] == 0 and labels["emphysema"] is None


def test_clean_report_strips_html_and_rtf():
    assert clean_report("<p>No&nbsp;effusion.</p>\r\n\r\n\r\n<b>Done</b>") == "No effusion.\n\nDone"
    assert "effusion" in clean_report(r"{\rtf1\ansi {\b No} pleural effusion.\par}")
    assert "\\" not in clean_report(r"{\rtf1\ansi {\b No} pleural effusion.\par}")


def test_phantom_reports_agree_with_ground_truth(phantom_ct):
    reports = {r["study_id"]: r["report"] for r in csv.DictReader(open(phantom_ct / "reports.csv", encoding="utf-8"))}
    truth = list(csv.DictReader(open(phantom_ct / "labels.csv", encoding="utf-8")))
    findings = [c for c in truth[0] if c != "study_id"]
    for row in truth:
        got = LAB.label(reports[row["study_id"]])
        for f in findings:
            assert (got[f] == 1) == (row[f] == "1"), (f, reports[row["study_id"]])
