"""``medalign``: the command line. This module parses arguments, calls the command
(:mod:`medalign.cli.commands`) and maps errors to exit codes: 2 a user mistake (one line), 3 some
studies failed, 4 the storage refused a write, 75 preempted (resume it)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from medalign.cli import commands
from medalign.errors import EXIT_PREEMPTED, MedalignError, Preempted, StorageError
from medalign.io.atomic import STORAGE_ERRNOS


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
    from medalign.prep.layouts import list_layouts

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
    s.add_argument("--layout", choices=("folder", *list_layouts()), default="folder",
                   help="folder: DICOM studies + reports.csv; ct-rate: NIfTI, metadata, reports and labels as CT-RATE publishes them; "
                        "rad-chestct: .npz volumes and abnormality x location labels as RAD-ChestCT publishes them")
    s.set_defaults(func=commands.cmd_synth)

    what = f"one DICOM series folder or image file ({suffixes}) -> NIfTI (world geometry as dcm2niix)"
    s = sub.add_parser("convert", help=what, description=what)
    s.add_argument("series_dir", type=_existing_path, metavar="SERIES_DIR|FILE")
    s.add_argument("output", type=Path, metavar="OUT.nii.gz")
    s.set_defaults(func=commands.cmd_convert)

    s = sub.add_parser("prep", parents=[progress], help="DICOM/NIfTI studies + reports -> dataset")
    s.add_argument("--images", type=_existing_dir, help=f"one sub-folder (or a file NAME{{{suffixes.replace(' ', '')}}}) per study; any DICOM tree with --group-by")
    s.add_argument("--reports", type=_existing_file, help="CSV (, ; tab or | between fields; UTF-8 or cp1252) or JSONL with study_id (or accession_number), report [, split]; other names: --columns")
    s.add_argument("--columns", type=_columns, default=None, metavar="ROLE=COLUMN,...",
                   help="the reports file's own column names: id, accession, report (or text), split, e.g. id=AccNo,report=ReportText")
    s.add_argument("--group-by", choices=("folder", "study_uid", "accession"), default="folder",
                   help="what makes a study: a sub-folder of --images (default), or the files' StudyInstanceUID or AccessionNumber")
    s.add_argument("--layout", choices=("folder", *list_layouts()), default="folder",
                   help="a published data set in its own tree (ct-rate: --images is its dataset/ folder; its reports, released "
                        "labels, splits, voxel sizes and rescale are read from it: no --reports; rad-chestct: --images holds its .npz files and "
                        "label CSVs; no reports are published, so it is for evaluation)")
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
    s.set_defaults(func=commands.cmd_prep)

    s = sub.add_parser("label", help="finding labels (1/0/-1/empty) parsed from reports")
    s.add_argument("--reports", type=_existing_file, required=True)
    s.add_argument("--columns", type=_columns, default=None, metavar="ROLE=COLUMN,...", help="as prep's --columns")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--vocab", default=None)
    s.add_argument("--audit", type=Path, default=None, metavar="DIR",
                   help="also write audit.html / audit.csv: per finding prevalence, counts and sample sentences with trigger and cue marked")
    s.add_argument("--audit-samples", type=int, default=10, metavar="N", help="sentences shown per finding and class (default 10)")
    s.set_defaults(func=commands.cmd_label)

    s = sub.add_parser("embed", parents=[progress], help="cache a dataset's study and report embeddings (computed once per model and dataset)")
    _model_data_out(s)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=commands.cmd_embed)

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
    s.set_defaults(func=commands.cmd_probe)

    s = sub.add_parser("finetune", parents=[progress], help="train the image encoder and a linear head on finding labels, end to end")
    _model_data_out(s)
    s.add_argument("--labels", type=_existing_path, default=None, help="CSV: study_id (or accession_number, VolumeName) + one 0/1 column per finding (default: parsed labels)")
    s.add_argument("--hash-ids", type=_existing_file, default=None, metavar="KEYFILE",
                   help="the key the dataset was prepared with (prep --hash-ids): the labels file's ids are pseudonymised alike")
    s.add_argument("--config", default=None, help="finetune preset or YAML (default: configs/finetune/default.yaml)")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="preset overrides, e.g. weight_decay=0.05 augment.flip_axes=[0,1]")
    s.add_argument("--epochs", type=int, default=None, help="(preset: 5)")
    s.add_argument("--batch-size", type=int, default=None, help="per device (preset: 16)")
    s.add_argument("--lr", type=float, default=None, help="(preset: 3e-4)")
    s.add_argument("--from-scratch", action="store_true", help="random initial weights: the supervised baseline")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--device", default=None, help="auto, cpu or cuda (the Lightning accelerator; preset: auto)")
    s.add_argument("--devices", type=int, default=None, help="devices per node (DDP when more than one)")
    s.add_argument("--num-nodes", type=int, default=None)
    s.add_argument("--strategy", default=None, help="Lightning strategy: auto, ddp, ...")
    s.add_argument("--precision", default=None, help="auto (bf16-mixed on GPU, 32-true on CPU), 32-true, bf16-mixed, 16-mixed")
    s.add_argument("--workers", type=int, default=None, help="data-loader worker processes per device")
    s.add_argument("--resume", action="store_true", help="continue OUT from OUT/checkpoints/last.ckpt")
    s.add_argument("--overwrite", action="store_true", help="replace a fine-tuning run already in OUT")
    s.set_defaults(func=commands.cmd_finetune)

    s = sub.add_parser("export", help="export a run's checkpoint as a self-contained model folder with its model card")
    s.add_argument("run", type=_existing_dir, metavar="RUN")
    s.add_argument("--checkpoint", default="last", help="last (default), best, or another name under RUN/checkpoints")
    s.add_argument("--out", type=Path, default=None, help="default: RUN/model (last) or RUN/model_<name>")
    s.add_argument("--data", type=_existing_dir, default=None,
                   help="the training dataset, for thresholds and validation figures (default: the one RUN/run.json names)")
    s.add_argument("--overwrite", action="store_true", help="replace an export already in the folder")
    s.set_defaults(func=commands.cmd_export)

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
    s.set_defaults(func=commands.cmd_pretrain)

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
    s.add_argument("--protocol", choices=["medalign", "ct-clip"], default="medalign",
                   help="with --data: ct-clip also prompts and calls as CT-CLIP's evaluation does (metrics.json 'protocol', "
                        "beside the published figures); medalign's own figures stay")
    s.add_argument("--out", type=Path, default=None)
    s.add_argument("--explain", type=Path, default=None, metavar="DIR",
                   help="with --study: per finding a relevance map on the study's scanner grid (.nii.gz), a figure (.png), explain.json")
    s.add_argument("--explain-method", choices=["auto", "gradcam", "occlusion", "rise"], default="auto",
                   help="gradcam (the encoder's deepest spatial map), occlusion (slower, model-agnostic), rise (random masks, "
                        "the volume's floor hidden; measured in docs/benchmarks.md), or auto (default): "
                        "gradcam, or rise where that map is too coarse to point (under 4 cells an axis); the choice is printed")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=commands.cmd_zeroshot)

    s = sub.add_parser("index", parents=[progress], help="embed a dataset's studies and reports for retrieval")
    _model_data_out(s)
    s.add_argument("--split", default="all", choices=["train", "val", "test", "all"])
    s.add_argument("--device", default="auto")
    s.add_argument("--approximate", default="auto", choices=["auto", "hnsw", "off"],
                   help="HNSW graphs for approximate search (auto: from 100,000 studies)")
    s.add_argument("--update", action="store_true", help="add only the studies an existing index at --out lacks")
    s.set_defaults(func=commands.cmd_index)

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
    s.add_argument("--explain-method", choices=["auto", "gradcam", "occlusion", "rise"], default="auto",
                   help="as zeroshot's --explain-method")
    s.add_argument("--ef-search", type=int, default=None, metavar="N",
                   help="HNSW indexes: candidates explored per query (default 512; higher: closer to exact, slower)")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=commands.cmd_retrieve)

    s = sub.add_parser("retrieval-eval", help="Recall@K (report<->study) and study->study mAP@10 on a split")
    s.add_argument("--index", type=_existing_dir, required=True)
    s.add_argument("--data", type=_existing_dir, required=True)
    s.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    s.add_argument("--labels", type=_existing_file, default=None, help="ground truth CSV (default: labels parsed from reports)")
    s.add_argument("--hash-ids", type=_existing_file, default=None, metavar="KEYFILE",
                   help="the key the dataset was prepared with (prep --hash-ids): the labels file's ids are pseudonymised alike")
    s.add_argument("--protocol", choices=["medalign", "ct-clip"], default="medalign",
                   help="ct-clip also computes CT-CLIP's report->volume Recall@5/10/50/100 and volume->volume score (metrics.json 'protocol')")
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(func=commands.cmd_retrieval_eval)

    s = sub.add_parser("serve", help="a web service and page over a trained model and its index (search, zero-shot, similar cases)")
    s.add_argument("--checkpoint", type=_existing_path, required=True, help="run folder or exported model folder")
    s.add_argument("--index", type=_existing_dir, required=True, help="the index built with this model (medalign index)")
    s.add_argument("--token-file", type=Path, required=True, help="a file holding the bearer token (mode 600: refused if others may read it)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-upload-mb", type=float, default=512.0, help="largest study a request may send (413 beyond)")
    s.add_argument("--pacs", default=None, metavar="URL", help="an Orthanc server (http://127.0.0.1:8042): enables ?study_uid= queries")
    s.add_argument("--vocab", default=None)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=commands.cmd_serve)

    s = sub.add_parser("demo", parents=[progress], help="synth -> prep -> pretrain -> zeroshot -> index -> retrieve on phantom data")
    s.add_argument("--out", type=Path, default=Path("demo_out"))
    s.add_argument("--modality", choices=["ct", "oct"], default="ct")
    s.add_argument("--studies", type=int, default=None)
    s.add_argument("--max-steps", type=int, default=None)
    s.set_defaults(func=commands.cmd_demo)
    return p




EXIT_STORAGE_ERROR = 4


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = ["medalign", *(sys.argv[1:] if argv is None else argv)]  # as typed, for run.json
    args.main = main  # a command that runs other commands (demo) runs them through this entry point
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
        if e.errno not in STORAGE_ERRNOS:
            raise
        # a full disk or a read-only / forbidden output folder is the machine's state, not a bug: say where
        where = f" {e.filename}" if e.filename else ""
        print(f"medalign {args.command}: error: cannot write{where}: {e.strerror or e}", file=sys.stderr)
        return EXIT_STORAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
