"""What each ``medalign`` subcommand does once its arguments are parsed: call the library, print
what the user needs to see. Heavy libraries are imported inside each command so that ``--help`` and
usage errors answer at once; errors are mapped to exit codes by :func:`medalign.cli.main.main`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medalign.errors import MedalignError


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


#: synth --layout NAME: the module and function writing a phantom tree in that published layout
SYNTH_LAYOUTS = {"ct-rate": ("medalign.synth.ct_rate", "synthesize_ct_rate"), "rad-chestct": ("medalign.synth.rad_chestct", "synthesize_rad_chestct")}


def cmd_synth(a: argparse.Namespace) -> int:
    if a.layout in SYNTH_LAYOUTS:
        import importlib

        if a.modality != "ct":
            raise MedalignError(f"synth --layout {a.layout} writes chest CT (--modality ct)")
        module, function = SYNTH_LAYOUTS[a.layout]
        summary = getattr(importlib.import_module(module), function)(a.out, a.studies, a.seed)
        volumes = f" ({summary['volumes']} volumes)" if "volumes" in summary else ""
        print(f"wrote {summary['studies']} {a.layout}-layout studies{volumes} to {summary['images']}; truth {summary['truth']}")
        return 0
    from medalign.synth.writer import synthesize

    summary = synthesize(a.out, a.modality, a.studies, a.seed)
    print(f"wrote {summary['studies']} {a.modality.upper()} studies to {summary['images']}; reports {summary['reports']}; labels {summary['labels']}")
    return 0


def cmd_convert(a: argparse.Namespace) -> int:
    from medalign.io.convert import convert_to_nifti

    volume, reason = convert_to_nifti(a.series_dir, a.output)
    print(f"{a.output}: {volume.array.shape} voxels of {', '.join(f'{s:.3g}' for s in volume.spacing)} mm ({reason})")
    return 0


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
    if a.images is None or (a.reports is None and a.layout == "folder"):
        raise MedalignError("prep: --images and --reports are required (except with --merge; --layout needs no --reports)")
    preset = a.config
    if preset is None:
        from medalign.prep.presets import default_prep_preset

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
                            given_labels=given, group_by=a.group_by, columns=a.columns, layout=a.layout)
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
    from medalign.reports.label_table import label_reports
    from medalign.reports.vocabulary import load_vocabulary

    n, problems = label_reports(a.reports, a.out, load_vocabulary(a.vocab or "chest_ct"), a.columns, a.audit, a.audit_samples)
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    print(f"labelled {n} reports -> {a.out}")
    if a.audit is not None:
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


#: finetune's flags and the preset keys they set (a flag wins over the preset and its key=value overrides)
_FINETUNE_FLAGS = {"epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "seed": "seed", "workers": "num_workers",
                   "device": "trainer.accelerator", "devices": "trainer.devices", "num_nodes": "trainer.num_nodes",
                   "strategy": "trainer.strategy", "precision": "trainer.precision"}


def _finetune_config(a: argparse.Namespace):
    """The finetune preset (``--config``, default ``default``) with ``key=value`` overrides, then the flags given."""
    from medalign.config import load_config
    from medalign.train.config import FinetuneConfig

    flags = [f"{key}={getattr(a, flag)}" for flag, key in _FINETUNE_FLAGS.items() if getattr(a, flag) is not None]
    return load_config(FinetuneConfig, a.config or "default", "finetune", [*a.overrides, *flags])


def cmd_finetune(a: argparse.Namespace) -> int:
    from medalign.tasks.finetune import finetune

    if a.resume and a.overwrite:
        raise MedalignError("finetune: --overwrite replaces a run, --resume continues one: choose one")
    if not a.resume:
        _refuse_trained_folder(a.out, "a fine-tuning run", "--resume", a.overwrite)  # before the lock: no lock file either
    with _one_writer(a.out, "finetune"):
        if not a.resume:
            _new_training_folder(a.out, "a fine-tuning run", "--resume", a.overwrite)
        r = finetune(a.checkpoint, a.data, a.out, _finetune_config(a), a.labels, a.from_scratch, resume=a.resume, progress=True,
                     command=a.command_line, id_key=_key(a))
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
    metrics = zeroshot_dataset(a.checkpoint, a.data, a.out, a.vocab, a.labels, a.split, a.device, _key(a), a.protocol)
    print(f"zeroshot: macro AUROC {metrics['macro_auroc']:.3f} over {metrics['n_findings_evaluated']} findings on {metrics['n_studies']} {a.split} studies -> {a.out}")
    if "protocol" in metrics:
        m = metrics["protocol"]["macro"]
        rad = "published_macro_auroc_rad_chestct" in metrics["protocol"]
        figures = metrics["protocol"]["published_macro_auroc_rad_chestct" if rad else "published_macro_auroc_ct_rate_valid"]
        published = ", ".join(f"{k} {v:.3f}" for k, v in figures.items())
        where = "RAD-ChestCT (calcifications merged)" if rad else "CT-RATE valid"
        print(f"zeroshot (CT-CLIP's protocol, thresholds chosen on the evaluated set): macro AUROC {m['auroc']:.3f}, weighted F1 "
              f"{m['f1_weighted']:.3f}, accuracy {m['accuracy']:.3f}, precision {m['precision']:.3f}; published on {where}: {published}")
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

    m = evaluate_retrieval(a.index, a.data, a.out, a.split, a.labels, _key(a), a.protocol)
    r, s2s = m["report_to_study"], m["study_to_study"]
    reports = (f"report->study R@5 {r['recall@5']:.3f} (chance {r['chance@5']:.3f}), study->report R@5 {m['study_to_report']['recall@5']:.3f}"
               if r is not None else "no reports: report recall not computed")
    print(f"retrieval-eval ({m['n_studies']} {a.split} studies): {reports}, study->study mAP@10 {s2s['map@10']:.3f} "
          f"(chance {s2s['chance_map@10']:.3f}) -> {a.out / 'metrics.json'}")
    if "protocol" in m:
        recall = ", ".join(f"R@{k} {v:.3f}" for k, v in (m["protocol"]["report_to_volume_recall"] or {}).items() if v is not None)
        v2v = ", ".join(f"@{k} {v:.3f}" for k, v in m["protocol"]["volume_to_volume"]["per_k"].items() if v is not None)
        print(f"retrieval-eval (CT-CLIP's protocol): report->volume {recall or 'no K within the split'}; volume->volume {v2v or '-'}")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    import logging

    from medalign.serve.app import create_app, read_token

    token = read_token(a.token_file)  # refused before anything heavy loads
    if a.max_upload_mb <= 0:
        raise MedalignError("--max-upload-mb: must be positive")
    from medalign.serve.service import Service

    service = Service(a.checkpoint, a.index, a.device, a.vocab)
    for note in service.notes:
        print(f"medalign serve: note: {note}", file=sys.stderr)
    pacs = None
    if a.pacs:
        from medalign.serve.pacs import OrthancClient

        pacs = OrthancClient(a.pacs)
    app = create_app(service, token, int(a.max_upload_mb * 2**20), pacs)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    print(f"medalign serve: {service.info()['studies']} indexed studies, {service.modality.upper()} model; "
          f"http://{a.host}:{a.port}/ (API: Authorization: Bearer <token in {a.token_file}>)", file=sys.stderr)
    import uvicorn

    uvicorn.run(app, host=a.host, port=a.port, access_log=False, log_level="warning")  # medalign's own access log: no query strings
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from medalign.cli.demo import run_demo

    return run_demo(a.out, a.modality, a.studies, a.max_steps, cli=a.main)
