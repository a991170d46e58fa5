"""RISE experiment (issue 29): random air-filled masks on a CELLS^3 grid, the covariance of each finding's
logit with the mask as its map; prints peak-to-lesion distances on demo_out/raw's test positives.
Usage: bench/explain_rise.py RUN FILLS STUDIES N CELLS P   (FILLS: air, mean, blurSIGMA_MM; comma-separated)"""
import csv, sys, time, numpy as np, nibabel as nib, torch
from pathlib import Path
torch.set_num_threads(2)
import medalign.tasks.explain as E
from medalign.tasks.explain import resample_to_grid, FindingScores, prompt_directions
from medalign.tasks.model_io import load_model
from medalign.tasks.raw_study import load_raw_study
from medalign.tasks.zeroshot_run import resolve_vocabulary
from medalign.tasks.explain_run import file_stem
from scipy.ndimage import gaussian_filter

run = Path(sys.argv[1]); raw = Path("demo_out/raw"); fills = sys.argv[2].split(","); n_st = int(sys.argv[3])
N = int(sys.argv[4]); cells = int(sys.argv[5]); p = float(sys.argv[6])
split = {r["study_id"]: r["split"] for r in csv.DictReader(open(raw/"reports.csv"))}
labels = list(csv.DictReader(open(raw/"labels.csv")))
model, md = load_model(run, "cpu"); model.eval()
voc = resolve_vocabulary(None, md, None)
FIND = ["lung nodule", "pleural effusion"]
ks = [voc.names.index(f) for f in FIND]
scores = FindingScores(model, prompt_directions(model, voc)[ks].float()); scores.eval()
ids = []
for f in FIND:
    ids += [r["study_id"] for r in labels if r[f]=="1" and split[r["study_id"]]=="test"][:n_st]
ids = list(dict.fromkeys(ids))

def rise(image, fill, N, cells, p):
    return E.rise_maps(scores, image, n_masks=N, cells=cells, keep=p, fill=fill)[1]


res = {}
for sid in ids:
    r = load_raw_study(raw/"images"/sid, md)
    image = torch.from_numpy(r.array)[None, None].float()
    sp = np.linalg.norm(r.affine[:3, :3], axis=0)
    for fill_name in fills:
        if fill_name == "air": fill = torch.zeros_like(image[0])
        elif fill_name == "mean": fill = torch.full_like(image[0], float(image.mean()))
        elif fill_name.startswith("blur"): fill = torch.from_numpy(gaussian_filter(r.array, float(fill_name[4:]) / sp).astype(np.float32))[None]
        t = time.time(); sal = rise(image, fill, N, cells, p).numpy(); dt = time.time() - t
        for j, f in enumerate(FIND):
            lab = [x for x in labels if x["study_id"] == sid][0][f]
            if lab != "1": continue
            les = nib.load(raw/"lesions"/sid/f"{file_stem(f)}.nii.gz")
            L = resample_to_grid(les.get_fdata().astype(np.float32), les.affine, r.array.shape, r.affine) > 0.5
            pk = np.array(np.unravel_index(np.argmax(sal[j]), sal[j].shape))
            d = np.min(np.linalg.norm((np.argwhere(L) - pk) * sp, axis=1))
            res.setdefault((fill_name, f), []).append(d)
        print(sid, fill_name, f"{dt:.0f}s", r.array.shape, flush=True)
for (fill_name, f), ds in sorted(res.items()):
    hits = sum(d <= sp.max() * 1.01 for d in ds)
    print(run.name, fill_name, f, "N", N, "cells", cells, "p", p, "dist mm:", " ".join(f"{d:.0f}" for d in ds), f"hits {hits}/{len(ds)}")
