"""Do the explanation maps point at the lesions? And what do they cost?

1. Pointing game on the phantom, which knows where each finding was drawn (``synth`` writes
   ``lesions/<study>/<finding>.nii.gz`` on the study's scanner grid): for every test-split study
   positive for a finding, does the map's maximum (``zeroshot --study --explain``'s NIfTI) fall
   inside the drawn lesion or within one voxel of it? Baseline: a random map, whose maximum is a
   uniformly random voxel; its hit rate is the dilated lesion's share of the volume (exact).
2. Speed: ``zeroshot --study`` against ``zeroshot --study --explain`` (Grad-CAM, every finding),
   each a whole call in this process (model load included); and medalign's Grad-CAM (one forward,
   a gradient per finding through the head) against MONAI's ``GradCAM`` (a forward and a backward
   per finding) on the same model and study, with the largest difference between their maps.

    .venv/bin/python bench/explain.py --run demo_out/run --raw demo_out/raw [--split test|all] [--methods gradcam occlusion]
        [--max-studies N] [--pointing-only] [--occlusion-fraction 0.125]

``--raw`` must hold ``lesions/`` (``medalign synth`` writes it; the demo's own folder does).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--raw", type=Path, required=True, help="synth output: images/, reports.csv, labels.csv, lesions/")
    ap.add_argument("--split", default="test", help="train, val, test, or all (a phantom the model never saw: every study)")
    ap.add_argument("--methods", nargs="+", default=["gradcam", "occlusion"])
    ap.add_argument("--findings", nargs="+", default=["pleural effusion", "cardiomegaly", "consolidation", "lung nodule"])
    ap.add_argument("--max-studies", type=int, default=0, help="per finding (0: all positives of the split)")
    ap.add_argument("--speed-only", action="store_true", help="skip the pointing game")
    ap.add_argument("--pointing-only", action="store_true", help="skip the speed measurements")
    ap.add_argument("--occlusion-fraction", type=float, default=None, help="occlusion patch size as a fraction of each axis "
                    "(default: medalign's OCCLUSION_FRACTION, 1/6)")
    args = ap.parse_args()
    if args.occlusion_fraction is not None:
        import medalign.tasks.explain as explain_module

        explain_module.OCCLUSION_FRACTION = args.occlusion_fraction

    import nibabel as nib
    import torch

    torch.set_num_threads(2)
    from medalign.tasks.explain import lesion_neighbourhood
    from medalign.tasks.explain_run import explain_study, file_stem
    from medalign.tasks.zeroshot_run import zeroshot_study

    with open(args.raw / "reports.csv", encoding="utf-8") as f:
        split = {r["study_id"]: r.get("split") for r in csv.DictReader(f)}
    with open(args.raw / "labels.csv", encoding="utf-8") as f:
        labels = list(csv.DictReader(f))
    work = Path(tempfile.mkdtemp(prefix="medalign_explain_"))
    print(f"pointing game, {args.split} split of {args.raw} (positives per finding), model {args.run}")
    print(f"{'finding':<18} {'method':<10} {'hits':>7} {'rate':>6}   random-map baseline")
    timings: dict[str, list[float]] = {m: [] for m in args.methods}
    for finding in [] if args.speed_only else args.findings:
        positives = [r["study_id"] for r in labels if r.get(finding) == "1" and args.split in ("all", split.get(r["study_id"]))]
        if args.max_studies:
            positives = positives[: args.max_studies]
        if not positives:
            continue
        chance = []
        hits = {m: 0 for m in args.methods}
        for sid in positives:
            lesion = nib.load(args.raw / "lesions" / sid / f"{file_stem(finding)}.nii.gz").get_fdata()
            near = lesion_neighbourhood(lesion)  # within one voxel
            chance.append(near.mean())
            for method in args.methods:
                out = work / method / sid
                t = time.perf_counter()
                result = explain_study(args.run, args.raw / "images" / sid, out, method=method, device="cpu")
                timings[method].append(time.perf_counter() - t)
                peak = tuple(result["findings"][finding]["max_voxel"])
                mapped = nib.load(out / f"{file_stem(finding)}.nii.gz")
                assert mapped.shape == lesion.shape, (mapped.shape, lesion.shape)
                hits[method] += bool(near[peak])
        for method in args.methods:
            print(f"{finding:<18} {method:<10} {hits[method]:>3}/{len(positives):<3} {hits[method] / len(positives):6.2f}"
                  f"   {np.mean(chance):.2f}")

    if args.pointing_only:
        return
    # speed: a plain --study call against an explained one, same study, whole calls
    sid = next(r["study_id"] for r in labels if args.split in ("all", split.get(r["study_id"])))
    study = args.raw / "images" / sid
    zeroshot_study(args.run, study, device="cpu")  # imports and first-call costs out of the timing
    plain, explained = [], []
    for _ in range(3):
        t = time.perf_counter()
        zeroshot_study(args.run, study, device="cpu")
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        explain_study(args.run, study, work / "speed", method="gradcam", device="cpu")
        explained.append(time.perf_counter() - t)
    print(f"speed, one study, every finding, median of 3 whole calls (model load included):")
    print(f"  zeroshot --study                    {np.median(plain):6.2f} s")
    print(f"  zeroshot --study --explain gradcam  {np.median(explained):6.2f} s   ratio {np.median(explained) / np.median(plain):.1f}x")
    for method, ts in timings.items():
        if ts:
            print(f"  --explain-method {method:<10} mean {np.mean(ts):6.2f} s a study over {len(ts)} calls")
    whole = {}
    for name, extra in (("zeroshot --study", []), ("zeroshot --study --explain (auto)", ["--explain", str(work / "cli")])):
        runs = []
        for _ in range(2):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "medalign.cli.main", "zeroshot", "--checkpoint", str(args.run), "--study", str(study),
                            "--device", "cpu", *extra], check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            runs.append(time.perf_counter() - t)
        whole[name] = min(runs)
    print("speed, whole command in a fresh interpreter (imports included, as a user waits), best of 2:")
    for name, t in whole.items():
        print(f"  {name:<36} {t:6.2f} s")
    print(f"  ratio {whole['zeroshot --study --explain (auto)'] / whole['zeroshot --study']:.1f}x")
    gradcam_vs_monai(args.run, study)


def gradcam_vs_monai(run: Path, study: Path) -> None:
    """medalign's Grad-CAM (one forward, per-finding gradients through the head) vs MONAI's GradCAM
    (a forward and a backward per finding), same model and study, timed in one process."""
    import torch
    from monai.visualize import GradCAM

    from medalign.tasks.explain import FindingScores, gradcam_maps, prompt_directions
    from medalign.tasks.model_io import load_model
    from medalign.tasks.raw_study import load_raw_study
    from medalign.tasks.zeroshot_run import resolve_vocabulary

    model, model_dir = load_model(run, "cpu")
    vocab = resolve_vocabulary(None, model_dir, None)
    image = torch.from_numpy(load_raw_study(study, model_dir).array)[None, None]
    scores = FindingScores(model, prompt_directions(model, vocab))
    layer = "model.image." + model.image.spatial_layer
    gradcam_maps(scores, image, layer)
    t = time.perf_counter()
    _, ours = gradcam_maps(scores, image, layer)
    t_ours = time.perf_counter() - t
    cam = GradCAM(nn_module=scores, target_layers=layer)
    cam(image, class_idx=0)
    t = time.perf_counter()
    theirs = torch.stack([cam(image, class_idx=k)[0, 0] for k in range(len(vocab.names))])
    t_monai = time.perf_counter() - t
    # MONAI maps each map's (min, max) to (1, 0); ours is scaled by its maximum: compare on one footing
    lo = ours.flatten(1).amin(1).view(-1, 1, 1, 1)
    hi = ours.flatten(1).amax(1).view(-1, 1, 1, 1)
    ours_mm = (ours - lo) / (hi - lo).clamp_min(1e-12)
    diff = float((ours_mm - (1.0 - theirs)).abs().max())
    print(f"Grad-CAM of {len(vocab.names)} findings on one {tuple(image.shape[2:])} study: medalign {t_ours:.3f} s, "
          f"MONAI GradCAM {t_monai:.3f} s ({t_monai / t_ours:.1f}x); max map difference {diff:.1e}")


if __name__ == "__main__":
    main()
