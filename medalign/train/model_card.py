"""``MODEL_CARD.md`` beside an exported model (the Hugging Face convention): what the model is for,
what it was trained on, how well it did on validation and with what uncertainty, where its
thresholds come from, and what it must not be used for. Built from ``run.json``, the run's config
and the export's ``thresholds.json`` / ``validation.json``; every figure is one of theirs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medalign.config import read_yaml
from medalign.io.atomic import atomic_write_text
from medalign.train.config import PretrainConfig

MODEL_CARD = "MODEL_CARD.md"
#: fewer validation positives than this make a finding's AUROC interval too wide to lean on
FEW_POSITIVES = 10


def write_model_card(folder: Path, record: dict[str, Any], config: PretrainConfig, checkpoint: str, step: int,
                     notes: list[str] | None = None, name: str | None = None) -> None:
    """Write ``folder/MODEL_CARD.md`` for the export in ``folder`` (to be known as ``name``)."""
    atomic_write_text(Path(folder) / MODEL_CARD, model_card(Path(folder), record, config, checkpoint, step, notes or [], name))


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def model_card(folder: Path, record: dict[str, Any], config: PretrainConfig, checkpoint: str, step: int, notes: list[str],
               name: str | None = None) -> str:
    """The card's Markdown text (``name``: the export folder's name, default ``folder``'s)."""
    name = name or folder.name
    prep = read_yaml(folder / "prep_config.yaml") if (folder / "prep_config.yaml").is_file() else {}
    vocab = read_yaml(folder / "vocab.yaml") if (folder / "vocab.yaml").is_file() else {}
    findings = [f["name"] for f in vocab.get("findings", [])]
    validation, thresholds = _json(folder / "validation.json"), _json(folder / "thresholds.json")
    data = record.get("dataset", {})
    modality = str(prep.get("modality", "ct")).upper()
    phantom = _trained_on_phantoms(data)
    lines = [f"# Model card: medalign {modality} dual encoder", ""]
    if phantom:
        lines += ["> **Trained on medalign's synthetic phantoms only.** A demonstration of the pipeline: it has never seen a "
                  "patient's scan and must not be used on one.", ""]
    lines += _intended_use(modality, prep, findings)
    lines += _training_data(data, findings)
    lines += _training(record, config, checkpoint, step)
    lines += _validation(validation, record, findings)
    lines += _thresholds(thresholds, validation)
    lines += _limits(phantom, modality, validation, data, notes)
    lines += ["## How to use it", "",
              "```",
              f"medalign zeroshot --checkpoint {name} --study STUDY_DIR_OR_NIFTI      # scores and calls per finding (JSON)",
              f"medalign index --checkpoint {name} --data DATASET --out INDEX         # then: medalign retrieve --index INDEX --study ...",
              f"medalign probe --checkpoint {name} --data DATASET --labels LABELS.csv --out DIR",
              "```", "",
              "Studies must be prepared as `prep_config.yaml` in this folder says (`medalign prep --config "
              f"{name}/prep_config.yaml`); commands refuse a dataset prepared otherwise.", ""]
    return "\n".join(lines)


def _trained_on_phantoms(data: dict[str, Any]) -> bool:
    from medalign.prep.presets import PHANTOM_MANUFACTURER

    scanners = data.get("scanners") or {}
    return bool(scanners) and set(scanners) == {PHANTOM_MANUFACTURER}


def _intended_use(modality: str, prep: dict, findings: list[str]) -> list[str]:
    steps = "; ".join(f"{name} {options}" for step in prep.get("steps", []) for name, options in step.items())
    return ["## Intended use", "",
            f"A 3D image encoder aligned with a report text encoder for {modality} studies, for research:",
            f"- zero-shot scores for findings named in words (the vocabulary's {len(findings)} findings: {', '.join(findings) or 'see vocab.yaml'}; "
            "other findings can be asked for in words, untested);",
            "- similar-case retrieval (study to study, text to study, study to report);",
            "- a starting point for linear probes and fine-tuning on local labels.",
            "",
            f"Input: one {modality} study prepared with this folder's `prep_config.yaml` ({steps or 'see the file'}).",
            "Not a medical device: every score needs checking against local, labelled data before it informs any decision.", ""]


def _training_data(data: dict[str, Any], findings: list[str]) -> list[str]:
    if not data:
        return ["## Training data", "", "Not recorded (this run has no `run.json`).", ""]
    studies, volumes = data.get("studies", {}), data.get("volumes", {})
    lines = ["## Training data", "",
             f"- Dataset `{data.get('path', '?')}` (manifest sha256 `{str(data.get('manifest_sha256', '?'))[:16]}…`).",
             "- Studies per split: " + ", ".join(f"{s} {studies.get(s, 0)}" for s in ("train", "val", "test"))
             + (f" (volumes: {', '.join(f'{s} {volumes.get(s, 0)}' for s in ('train', 'val', 'test'))})" if volumes != studies else "") + ".",
             "- Patients: " + (str(data["patients"]) if data.get("patients") is not None else
                               "not counted (the manifest keeps no patient key); studies of one patient share a split") + ".",
             f"- Labels: {data.get('labels', 'unknown')}; uncertain mentions count as {data.get('uncertain_labels_count_as', '?')}.",
             "- Scanners: " + (", ".join(f"{k} ({v} studies)" for k, v in (data.get("scanners") or {}).items()) or "not recorded") + ".",
             ""]
    positives = data.get("positives", {})
    if positives and findings:
        lines += ["Positive studies per finding:", "", "| finding | train | val | test |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | " + " | ".join(str(positives.get(s, {}).get(name, 0)) for s in ("train", "val", "test")) + " |"
                  for name in findings]
        lines.append("")
    return lines


def _training(record: dict[str, Any], config: PretrainConfig, checkpoint: str, step: int) -> list[str]:
    env = record.get("versions", {})
    text = config.model.text
    lines = ["## Training", "",
             f"- Image encoder `{config.model.image.name}` ({config.model.image.options or 'default options'}), text encoder "
             f"`{text.model}` ({'frozen' if text.trainable_layers == 0 else 'fine-tuned'}), embedding size {config.model.embed_dim}.",
             f"- Loss `{config.loss.name}` (mix {config.loss.mix}), AdamW lr {config.optim.lr:g} (text {config.optim.text_lr:g}), "
             f"{config.optim.warmup_steps} warm-up steps then cosine decay.",
             f"- Exported from `{checkpoint}` at step {step} of {config.trainer.max_steps}; global batch "
             f"{record.get('global_batch', '?')} on {record.get('world_size', '?')} process(es), precision {config.trainer.precision}.",
             ]
    if record.get("wall_s") is not None:
        from medalign.progress import format_duration

        lines.append(f"- Training time {format_duration(record['wall_s'])} over {len(record.get('segments', []))} segment(s) "
                     f"(a resumed run has several), {record.get('volumes_per_s', '?')} volumes/s.")
    if env:
        commit = record.get("git_commit")
        lines.append(f"- medalign {env.get('medalign', '?')}{' (commit ' + commit + ')' if commit else ''}, torch {env.get('torch', '?')}, "
                     f"Lightning {env.get('lightning', '?')}, MONAI {env.get('monai', '?')}, transformers {env.get('transformers', '?')}.")
    if record.get("preset"):
        lines.append(f"- Preset `{record['preset']}`; the whole configuration is in the run's `config.yaml`, the run's record in `run.json`.")
    return lines + [""]


def _validation(validation: dict[str, Any], record: dict[str, Any], findings: list[str]) -> list[str]:
    lines = ["## Validation", ""]
    if not validation:
        lines += ["No validation figures: see *Limits*.", ""]
        return lines
    macro = validation.get("macro_auroc")
    lines += [f"Zero-shot AUROC on the validation split ({validation.get('studies')} studies; the split the thresholds are "
              f"fitted on, so these figures are optimistic for the thresholds and not a test result). Macro AUROC "
              f"{macro:.3f}." if macro is not None else "No finding has positive and negative validation studies.", "",
              "| finding | studies | positives | AUROC | 95% CI (bootstrap) |", "|---|---:|---:|---:|---|"]
    for name in findings:
        v = validation.get("per_finding", {}).get(name)
        if v is None:
            continue
        if v.get("auroc") is None:
            lines.append(f"| {name} | {v['n']} | {v['n_positive']} | – | one class only |")
        else:
            lo, hi = v.get("auroc_ci95") or (None, None)
            ci = f"{lo:.2f}–{hi:.2f}" if lo is not None and hi is not None else "–"
            lines.append(f"| {name} | {v['n']} | {v['n_positive']} | {v['auroc']:.3f} | {ci} |")
    best = record.get("validation", {}).get("best")
    if best:
        lines += ["", f"During training the best validation macro AUROC was {best.get('val/macro_auroc', float('nan')):.3f} at step {best['step']}."]
    return lines + [""]


def _thresholds(thresholds: dict[str, Any], validation: dict[str, Any]) -> list[str]:
    lines = ["## Thresholds", ""]
    if not thresholds:
        return lines + ["None: `zeroshot --study` gives scores without calls. See *Limits*.", ""]
    lines += [f"`thresholds.json`: {thresholds.get('source', '')}. A score at or above a finding's threshold is called positive.", ""]
    lines += [f"- {name}: {value:.3f}" for name, value in thresholds.get("thresholds", {}).items()]
    lines += [f"- {name}: none ({why})" for name, why in thresholds.get("notes", {}).items()]
    return lines + [""]


def _limits(phantom: bool, modality: str, validation: dict[str, Any], data: dict[str, Any], notes: list[str]) -> list[str]:
    lines = ["## Limits", ""]
    if phantom:
        lines.append("- Trained and validated on synthetic phantoms: its figures say the pipeline works, nothing about patients.")
    lines.append(f"- Only {modality} studies prepared as `prep_config.yaml` says; another body region, field of view or "
                 "modality gives scores that mean nothing.")
    lines.append("- Labels come from report text: report errors and labeler errors are in the targets.")
    unseen = [name for name, n in data.get("positives", {}).get("train", {}).items() if n == 0]
    if unseen:
        lines.append(f"- No positive training study for {', '.join(unseen)}: their scores rest on the text encoder alone.")
    few = [name for name, v in validation.get("per_finding", {}).items() if v.get("auroc") is not None and v["n_positive"] < FEW_POSITIVES]
    if few:
        lines.append(f"- Fewer than {FEW_POSITIVES} validation positives for {', '.join(few)}: their AUROC intervals are wide.")
    if validation:
        lines.append("- Validated on a split of the training data's own source: test on your own scanners and population before use.")
    else:
        lines.append("- Not validated: test on your own labelled studies before use.")
    lines += [f"- {n[0].upper()}{n[1:]}." if not n.endswith(".") else f"- {n[0].upper()}{n[1:]}" for n in notes]
    return lines + [""]
