"""``medalign`` subcommands. Heavy libraries are imported inside each command so that
``--help`` and usage errors answer at once. A user mistake prints one line and exits 2."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

from medalign.errors import EXIT_PREEMPTED, MedalignError, Preempted, StorageError

EXIT_USER_ERROR = 2


def _existing_dir(value: str) -> Path:
    p = Path(value)
    if not p.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: folder not found")
    return p


def _existing_path(value: str) -> Path:
    p = Path(value)
    if not p.exists():
        raise argparse.ArgumentTypeError(f"{value}: no such file or folder")
    return p


def _existing_file(value: str) -> Path:
    p = Path(value)
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"{value}: file not found")
    return p


def _quiet_libraries() -> None:
    """Keep third-party chatter (HF progress bars, warnings) out of the user's terminal."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(monai|lightning|torch|pydicom)")
    import logging

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "transformers", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def _one_writer(folder: Path, name: str):
    """The output folder's lock (:func:`medalign.io.lock.output_lock`), taken by the launching process
    only: the other ranks of a multi-process run write under its lock."""
    from contextlib import nullcontext

    from medalign.io.lock import is_launching_process, output_lock

    return output_lock(folder, name) if is_launching_process() else nullcontext()


def _refuse_trained_folder(folder: Path, what: str, resume_hint: str | None, overwrite: bool) -> None:
    """A training command's ``--out`` holding a trained run stops it: exit 2, nothing touched (see
    :func:`medalign.train.run_folder.refuse_trained_folder`). Only rank 0 decides: the other ranks
    start after it has written into the folder."""
    from medalign.io.lock import is_launching_process
    from medalign.train.run_folder import refuse_trained_folder

    if is_launching_process():
        refuse_trained_folder(folder, what, resume_hint, overwrite)


def _new_training_folder(folder: Path, what: str, resume_hint: str, overwrite: bool) -> None:
    """Under the folder's lock: refused as :func:`_refuse_trained_folder` says (another run may have
    finished since), or emptied of the earlier run with ``--overwrite``."""
    from medalign.io.lock import is_launching_process
    from medalign.train.run_folder import clear_run, describe_trained

    _refuse_trained_folder(folder, what, resume_hint, overwrite)
    if overwrite and is_launching_process() and folder.is_dir() and describe_trained(folder) is not None:
        print(f"{folder}: --overwrite: removing the earlier run's checkpoints, exports, logs and records", file=sys.stderr)
        clear_run(folder)


def cmd_synth(a: argparse.Namespace) -> int:
    from medalign.synth.writer import synthesize

    summary = synthesize(a.out, a.modality, a.studies, a.seed)
    print(f"wrote {summary['studies']} {a.modality.upper()} studies to {summary['images']}; reports {summary['reports']}; labels {summary['labels']}")
    return 0


def cmd_convert(a: argparse.Namespace) -> int:
    from medalign.io.dicom import load_dicom_study
    from medalign.io.volume import SeriesSelection
    from medalign.io.nifti import save_nifti

    if not str(a.output).endswith((".nii", ".nii.gz")):
        raise MedalignError(f"{a.output}: output must end in .nii or .nii.gz")
    # any modality, plane or image type but localizers; frames without positions stacked in order
    # (the printed reason says which series was taken and how)
    policy = SeriesSelection(modalities=[], planes=[], skip_image_types=["LOCALIZER"], skip_secondary_capture=False,
                             min_slices=1, on_missing_frame_positions="frame_order")
    import numpy as np

    from medalign.io.readers import read_file, reader_for, suffix_list
    from medalign.io.volume import Volume

    if reader_for(a.series_dir) is not None:  # a file of a registered format; an OCT file's fundus image is written beside the volume
        volume, reason = read_file(a.series_dir)[0]
        if volume.laterality or volume.modality == "OCT":
            reason += f", eye {volume.laterality or 'unknown'}"
        if volume.localizer is not None:
            sx, sy = volume.localizer_spacing or (1.0, 1.0)  # the pixel-size-unknown case is said below, not hidden
            slo = Volume(array=np.ascontiguousarray(volume.localizer.T[:, :, None]), affine=np.diag([sx, sy, 1.0, 1.0]))
            slo_path = Path(str(a.output).replace(".nii", "_localizer.nii", 1))
            save_nifti(slo, slo_path)
            reason += f"; fundus image -> {slo_path}" + ("" if volume.localizer_spacing else " (pixel size unknown: written as 1 mm)")
    elif a.series_dir.is_dir():
        volume, reason = load_dicom_study(a.series_dir, policy)
    else:
        raise MedalignError(f"{a.series_dir}: neither a DICOM series folder nor a file medalign reads ({suffix_list()})")
    save_nifti(volume, a.output)
    print(f"{a.output}: {volume.array.shape} voxels of {', '.join(f'{s:.3g}' for s in volume.spacing)} mm ({reason})")
    return 0


def default_prep_preset(images: Path) -> tuple[str, str]:
    """The preset ``prep`` takes without ``--config`` and why: ``oct`` for OCT objects, ``chest_ct``
    otherwise; the 2-core demo presets (8 mm voxels) only for medalign's own phantom, never for
    hospital data."""
    from medalign.io.dicom import read_header
    from medalign.io.readers import reader_for
    from medalign.synth.dicom_writer import PHANTOM_MANUFACTURER

    for n, p in enumerate(sorted(images.rglob("*"))):
        if n > 2000:
            break
        reader = reader_for(p)
        if reader is not None and reader.modality == "OCT":
            return "oct", f"OCT files found ({reader.description})"
        if reader is None and p.is_file():
            ds = read_header(p)
            if ds is not None and "Rows" in ds:
                oct_ = str(ds.get("Modality", "")).upper() in ("OPT", "OCT")
                if str(ds.get("Manufacturer", "")) == PHANTOM_MANUFACTURER:
                    return ("demo_oct" if oct_ else "demo_ct"), "medalign's phantom"
                return ("oct", "OCT images found") if oct_ else ("chest_ct", "CT or other DICOM images found")
    return "chest_ct", "no DICOM found (NIfTI)"


def _positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value}: expected seconds, e.g. 30") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{value}: must be above 0")
    return seconds


def _columns(value: str) -> dict[str, str]:
    from medalign.io.tables import parse_columns

    try:
        return parse_columns(value)
    except MedalignError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix(f"--columns {value}: ")) from None


def _shard(value: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in value.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value}: expected I/N, e.g. 0/8") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"{value}: need 0 <= I < N")
    return i, n


def cmd_prep(a: argparse.Namespace) -> int:
    from medalign.config import load_config
    from medalign.prep.build import prepare_dataset
    from medalign.prep.shards import merge_shards
    from medalign.prep.config import PrepConfig
    from medalign.reports.vocabulary import load_vocabulary

    if a.merge:
        with _one_writer(a.out, "prep"):
            rows, errors = merge_shards(a.out)
        print(f"prep --merge: {rows} studies in {a.out / 'manifest.parquet'}, {errors} failed (errors.jsonl)")
        return 3 if errors else 0
    if a.images is None or a.reports is None:
        raise MedalignError("prep: --images and --reports are required (except with --merge)")
    preset = a.config
    if preset is None:
        preset, why = default_prep_preset(a.images)
        print(f"prep: no --config given: preset {preset} ({why}); pass --config PRESET or a YAML file to choose")
    config = load_config(PrepConfig, preset, "prep")
    vocab = load_vocabulary(a.vocab or config.vocab)
    given = None
    if a.labels is not None:
        from medalign.reports.given_labels import read_given_labels

        given = read_given_labels(a.labels, vocab)  # a column naming no finding stops here, before any work
    key = None
    if a.hash_ids is not None:
        from medalign.prep.pseudonyms import read_key

        key = read_key(a.hash_ids)
    if a.group_by != "folder" and key is None:
        print(f"prep: study ids are the {'StudyInstanceUIDs' if a.group_by == 'study_uid' else 'AccessionNumbers'} of the "
              "studies; --hash-ids KEYFILE writes keyed pseudonyms instead")
    lock = "prep" if a.shard is None else f"prep.shard-{a.shard[0]}-of-{a.shard[1]}"  # shards share a folder on purpose
    with _one_writer(a.out, lock):
        s = prepare_dataset(a.images, a.reports, a.out, vocab, config, workers=a.workers, shard=a.shard, id_key=key,
                            given_labels=given, group_by=a.group_by, columns=a.columns)
    reasons = "; ".join(f"{k}: {v}" for k, v in s.reasons.items())
    orphans = f", {s.reports_without_images} reports without images" if s.reports_without_images else ""
    print(f"prep (preset {Path(preset).stem}): {s.done} prepared, {s.skipped} already done, {s.failed} failed"
          f"{' (' + reasons + ')' if reasons else ''}{orphans} -> {s.out}")
    print("prep: studies per split: " + ", ".join(f"{k} {v}" for k, v in s.splits.items())
          + (f" (shard {a.shard[0]} of {a.shard[1]})" if a.shard else ""))
    if s.patients:
        print("prep: patients per split: " + ", ".join(f"{k} {v}" for k, v in s.patients.items()))
    if a.shard is None:
        for note in s.split_notes():
            print(f"note: {note}", file=sys.stderr)
    if s.failed:
        print(f"failures are listed in {s.out / 'errors.jsonl'}", file=sys.stderr)
    return s.exit_code


def cmd_label(a: argparse.Namespace) -> int:
    import csv

    from medalign.io.atomic import atomic_write
    from medalign.io.reports import read_reports
    from medalign.reports.deid import redact_identifiers
    from medalign.reports.labeler import ReportLabeler
    from medalign.reports.report_text import clean_report
    from medalign.reports.vocabulary import load_vocabulary

    vocab = load_vocabulary(a.vocab or "chest_ct")
    reports, problems, key_column = read_reports(a.reports, a.columns)
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    labeler = ReportLabeler(vocab)
    # one labelling pass, on the text prep would store (cleaned, identifiers redacted), for the CSV and the audit
    kept: dict[str, list] = {}
    rows = []
    for sid, row in reports.items():
        found = labeler.mentions(redact_identifiers(clean_report(row["report"])))
        labels = labeler.report_labels(found)
        rows.append([sid, *("" if labels[n] is None else labels[n] for n in vocab.names)])
        if a.audit is not None:
            kept[sid] = found

    def _write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow([key_column, *vocab.names])
            w.writerows(rows)

    atomic_write(a.out, _write)
    print(f"labelled {len(reports)} reports -> {a.out}")
    if a.audit is not None:
        from medalign.reports.audit import audit_labels

        audit_labels(kept, labeler, a.audit, per_class=a.audit_samples)
        print(f"audit: {a.audit / 'audit.html'}, {a.audit / 'audit.csv'}, {a.audit / 'audit_sentences.csv'}")
    return 0


def _pretrain_config(a: argparse.Namespace):
    from medalign.config import load_config, read_yaml
    from medalign.train.config import PretrainConfig

    name = a.config
    if a.resume is not None:
        if name is not None:
            raise MedalignError("pretrain: --resume continues with the run's own config.yaml; drop --config")
        name = str(a.resume / "config.yaml")
        if not Path(name).is_file():
            raise MedalignError(f"{a.resume}: not a run folder (no config.yaml)")
    elif name is None:
        prep_cfg = Path(a.data) / "prep_config.yaml"
        modality = read_yaml(prep_cfg).get("modality", "ct") if prep_cfg.is_file() else "ct"
        name = f"demo_{modality}"
    overrides = list(a.overrides)
    if a.max_steps is not None:
        overrides.append(f"trainer.max_steps={a.max_steps}")
    if a.checkpoint_every is not None:
        overrides.append(f"trainer.checkpoint_every={a.checkpoint_every}")
    if a.device is not None:
        overrides.append(f"trainer.accelerator={'gpu' if a.device.startswith('cuda') else a.device}")
    return load_config(PretrainConfig, name, "pretrain", overrides), (str(a.config) if a.config else name)


def cmd_pretrain(a: argparse.Namespace) -> int:
    config, preset = _pretrain_config(a)
    if a.print_config:
        import yaml

        from medalign.config import to_dict

        print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
        return 0
    from medalign.train.pretrain import pretrain

    if (a.out is None) == (a.resume is None):
        raise MedalignError("pretrain: give --out RUN for a new run or --resume RUN to continue one")
    if a.resume is not None and a.overwrite:
        raise MedalignError("pretrain: --overwrite replaces a run, --resume continues one: choose one")
    run = a.resume if a.resume is not None else a.out
    if a.resume is None:
        _refuse_trained_folder(run, "a pretraining run", f"--resume {run}", a.overwrite)  # before the lock: no lock file either
    with _one_writer(run, "pretrain"):
        if a.resume is None:
            _new_training_folder(run, "a pretraining run", f"--resume {run}", a.overwrite)
        export = pretrain(a.data, run, config, resume=a.resume is not None, preset=preset, command=a.command_line)
    if export is not None:  # every rank runs this command; rank 0 reports
        print(f"pretrain: model exported to {export}")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from medalign.train.export import export_checkpoint

    from medalign.train.export import export_folder

    _refuse_trained_folder(export_folder(a.run, a.checkpoint, a.out), "an exported model", None, a.overwrite)  # before any lock file
    # the default folder is inside the run: a training run writing there holds the lock
    with _one_writer(a.run, "pretrain") if a.out is None else _one_writer(a.out, "export"):
        folder, notes = export_checkpoint(a.run, a.checkpoint, a.out, a.data, a.overwrite)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"export: model written to {folder} (model card: {folder / 'MODEL_CARD.md'})")
    return 0


def cmd_embed(a: argparse.Namespace) -> int:
    from medalign.tasks.embeddings import embed_dataset

    out, computed = embed_dataset(a.checkpoint, a.data, a.out, a.device)
    print(f"embed: {'written to' if computed else 'up to date in'} {out}")
    return 0


def _key(a: argparse.Namespace) -> bytes | None:
    """The ``--hash-ids`` secret a labels file's ids are pseudonymised with, as prep did the dataset's."""
    from medalign.prep.pseudonyms import read_key

    return read_key(a.hash_ids) if getattr(a, "hash_ids", None) is not None else None


def cmd_probe(a: argparse.Namespace) -> int:
    from medalign.tasks.probe import probe_dataset

    r = probe_dataset(a.checkpoint, a.data, a.out, a.labels, a.fractions, a.seeds, a.device, a.supervised_epochs, _key(a))
    for f in r["fractions"]:
        p, b = r["pretrained"][str(f)]["macro_auroc"], r["random_init"][str(f)]["macro_auroc"]
        scratch = r.get("supervised_from_scratch", {}).get(str(f))
        extra = f", supervised from scratch {scratch['macro_auroc']:.3f}" if scratch and scratch["macro_auroc"] is not None else ""
        print(f"probe: {f:>6.0%} of labels  macro AUROC {p:.3f} (random init {b:.3f}{extra})")
    print(f"probe: {a.out / 'metrics.json'}, {a.out / 'label_efficiency.png'}")
    return 0


def cmd_finetune(a: argparse.Namespace) -> int:
    from medalign.tasks.finetune import finetune

    if a.resume and a.overwrite:
        raise MedalignError("finetune: --overwrite replaces a run, --resume continues one: choose one")
    if not a.resume:
        _refuse_trained_folder(a.out, "a fine-tuning run", "--resume", a.overwrite)  # before the lock: no lock file either
    with _one_writer(a.out, "finetune"):
        if not a.resume:
            _new_training_folder(a.out, "a fine-tuning run", "--resume", a.overwrite)
        r = finetune(a.checkpoint, a.data, a.out, a.labels, a.epochs, a.batch_size, a.lr, a.from_scratch, a.device, a.seed,
                     devices=a.devices, num_nodes=a.num_nodes, strategy=a.strategy, precision=a.precision, num_workers=a.workers,
                     resume=a.resume, progress=True, command=a.command_line, id_key=_key(a))
    if r is None:  # every rank runs this command; rank 0 reports
        return 0
    start = "random init" if a.from_scratch else "pretrained encoder"
    print(f"finetune ({start}): test macro AUROC {r['macro_auroc']:.3f} (epoch {r['epoch_chosen'] + 1} of {r['epochs']}) -> {a.out}")
    return 0


def cmd_zeroshot(a: argparse.Namespace) -> int:
    from medalign.tasks.zeroshot_run import zeroshot_dataset, zeroshot_study

    if a.explain is not None and a.study is None:
        raise MedalignError("zeroshot: --explain DIR explains one --study")
    if a.study is not None and a.explain is not None:
        from medalign.tasks.explain_run import explain_study

        result = explain_study(a.checkpoint, a.study, a.explain, a.vocab, a.device, a.modality, a.explain_method)
        print(json.dumps(result["findings"], indent=2))
        print(f"zeroshot --explain: method {result['method']}")
        if "note_volumes" in result:
            print(f"zeroshot --explain: {result['note_volumes']}")
        print(f"zeroshot --explain: per finding a map on the study's scanner grid (.nii.gz), a figure (.png), and explain.json -> {a.explain}")
        _warn_out_of_distribution(a.study, result)
        return 0
    if a.study is not None:
        result = zeroshot_study(a.checkpoint, a.study, a.vocab, a.device, a.modality)
        print(json.dumps(result, indent=2))
        _warn_out_of_distribution(a.study, result)
        return 0
    if a.data is None or a.out is None:
        raise MedalignError("zeroshot: give --study PATH, or --data DATASET with --out DIR")
    metrics = zeroshot_dataset(a.checkpoint, a.data, a.out, a.vocab, a.labels, a.split, a.device, _key(a))
    print(f"zeroshot: macro AUROC {metrics['macro_auroc']:.3f} over {metrics['n_findings_evaluated']} findings on {metrics['n_studies']} {a.split} studies -> {a.out}")
    return 0


def _warn_out_of_distribution(study: Path, result: dict) -> None:
    """One line on stderr when the guard finds the study unlike the training data (the JSON says why too)."""
    if result.get("out_of_distribution"):
        print(f"warning: {study}: out of the training distribution, read its scores with caution: " + "; ".join(result["ood_reasons"]),
              file=sys.stderr)


def cmd_index(a: argparse.Namespace) -> int:
    from medalign.tasks.retrieval_run import index_dataset

    with _one_writer(a.out, "index"):
        added, total = index_dataset(a.checkpoint, a.data, a.out, a.device, a.split, a.approximate, a.update)
    print(f"index: {added} studies embedded, {total} in {a.out}")
    return 0


def cmd_retrieve(a: argparse.Namespace) -> int:
    from medalign.tasks.retrieval_run import retrieve

    hits = retrieve(a.index, a.out, study=a.study, text=a.text, k=a.k, device=a.device, target=a.target, html=a.html, ef_search=a.ef_search,
                    modality=a.modality, explain=a.explain, explain_method=a.explain_method)
    if a.study is not None and (a.out / "query.json").is_file():
        _warn_out_of_distribution(a.study, json.loads((a.out / "query.json").read_text(encoding="utf-8")))
    if a.explain and hits:
        print(f"retrieve --explain: method {hits[0]['explain']['method']}")
    for h in hits:
        print(f"{h['rank']:>3}  {h['study_id']:<24} {h['score']:.3f}  {h['impression'][:80]}")
    print(f"retrieve: {a.out / 'results.json'}, {a.out / 'montage.png'}" + (f", {a.out / 'results.html'}" if a.html else ""))
    return 0


def cmd_retrieval_eval(a: argparse.Namespace) -> int:
    from medalign.tasks.retrieval_eval import evaluate_retrieval

    m = evaluate_retrieval(a.index, a.data, a.out, a.split, a.labels, _key(a))
    r, s2s = m["report_to_study"], m["study_to_study"]
    print(f"retrieval-eval ({m['n_studies']} {a.split} studies): report->study R@5 {r['recall@5']:.3f} (chance {r['chance@5']:.3f}), "
          f"study->report R@5 {m['study_to_report']['recall@5']:.3f}, study->study mAP@10 {s2s['map@10']:.3f} "
          f"(chance {s2s['chance_map@10']:.3f}) -> {a.out / 'metrics.json'}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from medalign.cli.demo import run_demo

    return run_demo(a.out, a.modality, a.studies, a.max_steps)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): a user mistake reads like every other one."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _model_data_out(s: argparse.ArgumentParser) -> None:
    """The arguments of commands that run a trained model over a prepared dataset."""
    s.add_argument("--checkpoint", type=_existing_path, required=True, help="run folder, exported model folder or .ckpt")
    s.add_argument("--data", type=_existing_dir, required=True)
    s.add_argument("--out", type=Path, required=True)


def build_parser() -> argparse.ArgumentParser:
    from medalign.io.readers import suffix_list

    suffixes = suffix_list()  # the registered formats (medalign.io.readers), named once
    p = _Parser(prog="medalign", description="3D medical vision-language pretraining, zero-shot diagnosis and case retrieval.")
    from medalign import __version__

    p.add_argument("--version", action="version", version=f"medalign {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    progress = argparse.ArgumentParser(add_help=False)  # every long command: its progress lines' pace
    progress.add_argument("--progress-interval", type=_positive_seconds, default=None, metavar="SECONDS",
                          help="when output is not a terminal, a progress line every SECONDS (default 30)")

    s = sub.add_parser("synth", help="write a phantom DICOM data set with reports")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--modality", choices=["ct", "oct"], default="ct")
    s.add_argument("--studies", type=int, default=300)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_synth)

    what = f"one DICOM series folder or image file ({suffixes}) -> NIfTI (world geometry as dcm2niix)"
    s = sub.add_parser("convert", help=what, description=what)
    s.add_argument("series_dir", type=_existing_path, metavar="SERIES_DIR|FILE")
    s.add_argument("output", type=Path, metavar="OUT.nii.gz")
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("prep", parents=[progress], help="DICOM/NIfTI studies + reports -> dataset")
    s.add_argument("--images", type=_existing_dir, help=f"one sub-folder (or a file NAME{{{suffixes.replace(' ', '')}}}) per study; any DICOM tree with --group-by")
    s.add_argument("--reports", type=_existing_file, help="CSV (, ; tab or | between fields; UTF-8 or cp1252) or JSONL with study_id (or accession_number), report [, split]; other names: --columns")
    s.add_argument("--columns", type=_columns, default=None, metavar="ROLE=COLUMN,...",
                   help="the reports file's own column names: id, accession, report (or text), split, e.g. id=AccNo,report=ReportText")
    s.add_argument("--group-by", choices=("folder", "study_uid", "accession"), default="folder",
                   help="what makes a study: a sub-folder of --images (default), or the files' StudyInstanceUID or AccessionNumber")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--shard", type=_shard, default=None, metavar="I/N", help="prepare only shard I of N (cluster array jobs); then --merge")
    s.add_argument("--merge", action="store_true", help="join the shards' manifests in --out into manifest.parquet")
    s.add_argument("--hash-ids", type=_existing_path, default=None, metavar="KEYFILE",
                   help="replace study ids by a keyed hash (HMAC-SHA256) with the secret in KEYFILE; the key is never written")
    s.add_argument("--vocab", default=None, help="vocabulary YAML or preset (default: the prep preset's)")
    s.add_argument("--labels", type=_existing_file, default=None, metavar="FILE.csv",
                   help="labels you already have: study_id (or VolumeName) + one column per finding, 1/0/-1/empty; they win over the labeler")
    s.add_argument("--config", default=None, help="prep YAML or preset under configs/prep (default: chest_ct, oct for OCT; said on the terminal)")
    s.add_argument("--workers", type=int, default=None)
    s.set_defaults(func=cmd_prep)

    s = sub.add_parser("label", help="finding labels (1/0/-1/empty) parsed from reports")
    s.add_argument("--reports", type=_existing_file, required=True)
    s.add_argument("--columns", type=_columns, default=None, metavar="ROLE=COLUMN,...", help="as prep's --columns")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--vocab", default=None)
    s.add_argument("--audit", type=Path, default=None, metavar="DIR",
                   help="also write audit.html / audit.csv: per finding prevalence, counts and sample sentences with trigger and cue marked")
    s.add_argument("--audit-samples", type=int, default=10, metavar="N", help="sentences shown per finding and class (default 10)")
    s.set_defaults(func=cmd_label)

    s = sub.add_parser("embed", parents=[progress], help="cache a dataset's study and report embeddings (computed once per model and dataset)")
    _model_data_out(s)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_embed)

    s = sub.add_parser("probe", parents=[progress], help="linear probes on frozen embeddings at several label fractions, against random init")
    _model_data_out(s)
    s.add_argument("--labels", type=_existing_path, default=None, help="CSV: study_id (or accession_number, VolumeName) + one 0/1 column per finding (default: labels parsed from reports)")
    s.add_argument("--hash-ids", type=_existing_file, default=None, metavar="KEYFILE",
                   help="the key the dataset was prepared with (prep --hash-ids): the labels file's ids are pseudonymised alike")
    s.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    s.add_argument("--seeds", type=int, default=3, help="subsamples per fraction (averaged)")
    s.add_argument("--supervised-epochs", type=int, default=0, metavar="N",
                   help="also train the encoder from scratch for N epochs on each fraction (the supervised baseline; slow)")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_probe)

    s = sub.add_parser("finetune", parents=[progress], help="train the image encoder and a linear head on finding labels, end to end")
    _model_data_out(s)
    s.add_argument("--labels", type=_existing_path, default=None, help="CSV: study_id (or accession_number, VolumeName) + one 0/1 column per finding (default: parsed labels)")
    s.add_argument("--hash-ids", type=_existing_file, default=None, metavar="KEYFILE",
                   help="the key the dataset was prepared with (prep --hash-ids): the labels file's ids are pseudonymised alike")
    s.add_argument("--epochs", type=int, default=5)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--lr", type=float, default=3e-4)
    s.add_argument("--from-scratch", action="store_true", help="random initial weights: the supervised baseline")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto", help="auto, cpu or cuda (the Lightning accelerator)")
    s.add_argument("--devices", type=int, default=1, help="devices per node (DDP when more than one)")
    s.add_argument("--num-nodes", type=int, default=1)
    s.add_argument("--strategy", default="auto", help="Lightning strategy: auto, ddp, ...")
    s.add_argument("--precision", default="auto", help="auto (bf16-mixed on GPU, 32-true on CPU), 32-true, bf16-mixed, 16-mixed")
    s.add_argument("--workers", type=int, default=0, help="data-loader worker processes per device")
    s.add_argument("--resume", action="store_true", help="continue OUT from OUT/checkpoints/last.ckpt")
    s.add_argument("--overwrite", action="store_true", help="replace a fine-tuning run already in OUT")
    s.set_defaults(func=cmd_finetune)

    s = sub.add_parser("export", help="export a run's checkpoint as a self-contained model folder with its model card")
    s.add_argument("run", type=_existing_dir, metavar="RUN")
    s.add_argument("--checkpoint", default="last", help="last (default), best, or another name under RUN/checkpoints")
    s.add_argument("--out", type=Path, default=None, help="default: RUN/model (last) or RUN/model_<name>")
    s.add_argument("--data", type=_existing_dir, default=None,
                   help="the training dataset, for thresholds and validation figures (default: the one RUN/run.json names)")
    s.add_argument("--overwrite", action="store_true", help="replace an export already in the folder")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("pretrain", parents=[progress], help="contrastive pretraining (Lightning)")
    s.add_argument("--data", type=_existing_dir, required=True)
    s.add_argument("--out", type=Path, default=None, help="new run folder")
    s.add_argument("--resume", type=_existing_dir, default=None, metavar="RUN", help="continue RUN from checkpoints/last.ckpt")
    s.add_argument("--overwrite", action="store_true", help="with --out: replace a trained run already in the folder")
    s.add_argument("--checkpoint-every", type=int, default=None, metavar="K", help="keep checkpoints/last.ckpt current every K steps")
    s.add_argument("--config", default=None, help="pretrain YAML or preset (default: demo_<modality of the dataset>)")
    s.add_argument("--max-steps", type=int, default=None)
    s.add_argument("--device", default=None, help="cpu, gpu/cuda or auto (default: the config's trainer.accelerator)")
    s.add_argument("--print-config", action="store_true", help="print the merged configuration and exit")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=3e-4")
    s.set_defaults(func=cmd_pretrain)

    s = sub.add_parser("zeroshot", parents=[progress], help="score findings from prompts alone")
    s.add_argument("--checkpoint", type=_existing_path, required=True, help="run folder, exported model folder or .ckpt")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--data", type=_existing_dir)
    g.add_argument("--study", type=_existing_path, help="one raw study (DICOM folder or NIfTI): JSON on stdout")
    s.add_argument("--modality", choices=["ct", "oct"], default=None,
                   help="with a NIfTI --study: confirms it is of the model's modality (NIfTI carries none)")
    s.add_argument("--vocab", default=None)
    s.add_argument("--labels", type=_existing_file, default=None)
    s.add_argument("--hash-ids", type=_existing_file, default=None, metavar="KEYFILE",
                   help="the key the dataset was prepared with (prep --hash-ids): the labels file's ids are pseudonymised alike")
    s.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    s.add_argument("--out", type=Path, default=None)
    s.add_argument("--explain", type=Path, default=None, metavar="DIR",
                   help="with --study: per finding a relevance map on the study's scanner grid (.nii.gz), a figure (.png), explain.json")
    s.add_argument("--explain-method", choices=["auto", "gradcam", "occlusion"], default="auto",
                   help="gradcam (the encoder's deepest spatial map), occlusion (slower, model-agnostic), or auto (default): "
                        "gradcam unless that map is too coarse to point (under 4 cells an axis); the choice is printed")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_zeroshot)

    s = sub.add_parser("index", parents=[progress], help="embed a dataset's studies and reports for retrieval")
    _model_data_out(s)
    s.add_argument("--split", default="all", choices=["train", "val", "test", "all"])
    s.add_argument("--device", default="auto")
    s.add_argument("--approximate", default="auto", choices=["auto", "hnsw", "off"],
                   help="HNSW graphs for approximate search (auto: from 100,000 studies)")
    s.add_argument("--update", action="store_true", help="add only the studies an existing index at --out lacks")
    s.set_defaults(func=cmd_index)

    s = sub.add_parser("retrieve", help="similar studies for a study or a text query")
    s.add_argument("--index", type=_existing_dir, required=True)
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--study", type=_existing_path)
    g.add_argument("--text")
    s.add_argument("--modality", choices=["ct", "oct"], default=None,
                   help="with a NIfTI --study: confirms it is of the model's modality (NIfTI carries none)")
    s.add_argument("--k", type=int, default=5)
    s.add_argument("--target", choices=["studies", "reports"], default="studies", help="search study images (default) or reports")
    s.add_argument("--html", action="store_true", help="also write results.html, a self-contained page of the same")
    s.add_argument("--explain", action="store_true",
                   help="show, for each hit, the regions of the hit and of the query that make them similar (montage and page)")
    s.add_argument("--explain-method", choices=["auto", "gradcam", "occlusion"], default="auto",
                   help="as zeroshot's --explain-method")
    s.add_argument("--ef-search", type=int, default=None, metavar="N",
                   help="HNSW indexes: candidates explored per query (default 512; higher: closer to exact, slower)")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_retrieve)

    s = sub.add_parser("retrieval-eval", help="Recall@K (report<->study) and study->study mAP@10 on a split")
    s.add_argument("--index", type=_existing_dir, required=True)
    s.add_argument("--data", type=_existing_dir, required=True)
    s.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    s.add_argument("--labels", type=_existing_file, default=None, help="ground truth CSV (default: labels parsed from reports)")
    s.add_argument("--hash-ids", type=_existing_file, default=None, metavar="KEYFILE",
                   help="the key the dataset was prepared with (prep --hash-ids): the labels file's ids are pseudonymised alike")
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(func=cmd_retrieval_eval)

    s = sub.add_parser("demo", parents=[progress], help="synth -> prep -> pretrain -> zeroshot -> index -> retrieve on phantom data")
    s.add_argument("--out", type=Path, default=Path("demo_out"))
    s.add_argument("--modality", choices=["ct", "oct"], default="ct")
    s.add_argument("--studies", type=int, default=None)
    s.add_argument("--max-steps", type=int, default=None)
    s.set_defaults(func=cmd_demo)
    return p


#: errno values that mean the output storage refused the write (full, read-only, forbidden, quota)
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}
EXIT_STORAGE_ERROR = 4


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = ["medalign", *(sys.argv[1:] if argv is None else argv)]  # as typed, for run.json
    _quiet_libraries()
    if getattr(args, "progress_interval", None) is not None:
        from medalign.progress import set_interval

        set_interval(args.progress_interval)  # also reaches the ranks and workers this command starts
    try:
        return int(args.func(args) or 0)
    except StorageError as e:
        print(f"medalign {args.command}: error: {e}", file=sys.stderr)
        return EXIT_STORAGE_ERROR
    except Preempted as e:
        print(f"medalign {args.command}: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    except MedalignError as e:
        print(f"medalign {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"medalign {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in _STORAGE_ERRNOS:
            raise
        # a full disk or a read-only / forbidden output folder is the machine's state, not a bug: say where
        where = f" {e.filename}" if e.filename else ""
        print(f"medalign {args.command}: error: cannot write{where}: {e.strerror or e}", file=sys.stderr)
        return EXIT_STORAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
