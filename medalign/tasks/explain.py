"""Where in the volume a zero-shot answer comes from: relevance maps of each finding's
positive-versus-negative prompt score.

The score explained is the finding's logit ``scale * <image, positive - negative>``, whose sigmoid
is the probability ``zeroshot`` reports. Three methods, each for every encoder in the registry:

- ``gradcam``: Grad-CAM on the encoder's deepest spatial map (``ImageEncoder.spatial_layer``). One
  forward pass; each finding then needs only the gradient of its score with respect to that map,
  which flows through the pooling and projection head, not the backbone (MONAI's ``GradCAM`` runs a
  full forward and backward per finding: ``bench/explain.py`` measures both).
- ``occlusion``: MONAI's ``OcclusionSensitivity``, the slower model-agnostic check: how much each
  finding's score falls when a patch of the volume is replaced by the volume's mean.
- ``rise``: randomised input sampling (Petsiuk et al., 2018): the covariance of each finding's score
  with many random smooth masks whose hidden part is the volume's floor (air, background).
- ``auto`` (default): Grad-CAM when the deepest map is fine enough to point, rise otherwise: on
  the demo models' 2 x 2 x 2 maps rise points at 12/15 and 15/15 effusions where occlusion finds
  0/15 and 12/14 (docs/benchmarks.md).

Similar-case retrieval explains its similarity score the same way: the directions are then the
other study's embedding (:func:`relevance_maps`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medalign.errors import InputError
from medalign.models.dual import DualEncoder
from medalign.progress import Progress

METHODS = ("auto", "gradcam", "occlusion", "rise")
#: Grad-CAM needs this many cells along each axis of the deepest spatial map to point at an
#: organ-sized region: on the demo encoder's 2 x 2 x 2 map it hits no lesion (bench/explain.py);
#: coarser maps make ``auto`` use rise instead
MIN_GRADCAM_CELLS = 4
#: occlusion patches span this fraction of each axis of the model's grid
OCCLUSION_FRACTION = 1 / 6
#: random masks a ``rise`` map averages over (its pointing figures in docs/benchmarks.md)
RISE_MASKS = 1024


class FindingScores(nn.Module):
    """``(B, 1, X, Y, Z) -> (B, K)``: each finding's logit ``scale * <image, pos_k - neg_k>``
    (``direction`` holds ``pos_k - neg_k``, ``(K, D)``; or other studies' embeddings, for similarity)."""

    def __init__(self, model: DualEncoder, direction: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("direction", direction)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.scale() * self.model.encode_image(images) @ self.direction.T


@torch.no_grad()
def prompt_directions(model: DualEncoder, vocab) -> torch.Tensor:
    """``(K, D)``: per finding, its positive minus its negative prompt embedding (ensembles averaged)."""
    from medalign.models.inference import prompt_embeddings

    pairs = [f.prompt_pair() for f in vocab.findings]
    pos = prompt_embeddings(model, [p.positives for p in pairs])
    neg = prompt_embeddings(model, [p.negatives for p in pairs])
    return (pos - neg).float()


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each map of ``(K, X, Y, Z)`` scaled to [0, 1] by its own maximum (an all-zero map stays zero)."""
    top = maps.flatten(1).amax(dim=1).clamp_min(1e-12)
    return maps / top.view(-1, 1, 1, 1)


def gradcam_maps(scores: FindingScores, image: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM of every finding at once: ``image`` ``(1, 1, X, Y, Z)`` -> (``(K,)`` scores,
    ``(K, X, Y, Z)`` maps in [0, 1]), trilinearly upsampled from ``layer``'s ``(1, C, x, y, z)`` map.

    The map of finding k is ``relu(sum_c w_c A_c)`` with ``w_c`` the mean over space of
    ``d score_k / d A_c`` (Selvaraju et al., 2017)."""
    module = dict(scores.named_modules())[layer]
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
    was_training = scores.training
    scores.eval()
    try:
        with torch.enable_grad():
            logits = scores(image.requires_grad_(False))[0]  # (K,)
            acts = captured[0]
            maps = []
            for k in range(logits.shape[0]):
                (grad,) = torch.autograd.grad(logits[k], acts, retain_graph=k + 1 < logits.shape[0])
                weights = grad.mean(dim=(2, 3, 4), keepdim=True)
                maps.append(F.relu((weights * acts).sum(dim=1))[0].detach())
    finally:
        handle.remove()
        scores.train(was_training)
    cam = torch.stack(maps)[:, None].float()  # (K, 1, x, y, z)
    cam = F.interpolate(cam, size=tuple(image.shape[2:]), mode="trilinear", align_corners=False)[:, 0]
    return logits.detach(), _normalise(cam)


def spatial_map_shape(scores: FindingScores, image: torch.Tensor, layer: str) -> tuple[int, ...]:
    """``(x, y, z)`` of ``layer``'s map for ``image`` (one forward without gradients)."""
    module = dict(scores.named_modules())[layer]
    shapes: list[tuple[int, ...]] = []
    handle = module.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[2:])))
    try:
        with torch.no_grad():
            scores.eval()
            scores(image)
    finally:
        handle.remove()
    return shapes[0]


def occlusion_maps(scores: FindingScores, image: torch.Tensor, mask_size: int | tuple[int, ...] | None = None,
                   n_batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Occlusion sensitivity (MONAI's ``OcclusionSensitivity``, patches of ``mask_size`` voxels filled
    with the volume's mean): ``image`` ``(1, 1, X, Y, Z)`` -> (``(K,)`` scores, ``(K, X, Y, Z)`` maps
    in [0, 1]) where a voxel's relevance is how far each finding's score falls when it is hidden.
    ``mask_size`` defaults to :data:`OCCLUSION_FRACTION` of each axis; patches overlap by half."""
    from monai.visualize import OcclusionSensitivity

    if mask_size is None:
        mask_size = tuple(max(2, int(np.ceil(n * OCCLUSION_FRACTION))) for n in image.shape[2:])

    scores.eval()
    with torch.no_grad():
        base = scores(image)[0]
        occluded, _ = OcclusionSensitivity(scores, mask_size=mask_size, n_batch=n_batch, mode="mean_img", overlap=0.5,
                                           verbose=False, activate=False)(image)
    occluded = occluded.as_tensor() if hasattr(occluded, "as_tensor") else occluded  # MONAI returns a MetaTensor
    drop = F.relu(base.view(-1, 1, 1, 1) - occluded[0].float())
    return base, _normalise(drop)


def rise_maps(scores: nn.Module, image: torch.Tensor, n_masks: int = RISE_MASKS, cells: int = 8, keep: float = 0.5,
              n_batch: int = 16, seed: int = 0, fill: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """RISE (Petsiuk et al., 2018): ``image`` ``(1, 1, X, Y, Z)`` -> (``(K,)`` scores, ``(K, X, Y, Z)``
    maps in [0, 1]). ``n_masks`` binary masks on a ``cells``^3 grid (each cell kept with probability
    ``keep``) are upsampled trilinearly with a random shift; the hidden part takes the volume's
    minimum (the intensity window's floor: air in CT, background in OCT) unless ``fill``
    ``(1, X, Y, Z)`` says otherwise. A voxel's relevance is the covariance over masks of each score
    with the mask there: positive where showing the voxel raises the score. Seeded: the same call,
    the same map."""
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(image.shape[2:])
    cell = [int(np.ceil(n / cells)) for n in shape]
    big = [(cells + 1) * c for c in cell]
    floor = image.min()  # hiding shows what the volume has where there is no tissue, not a grey patch
    scores.eval()
    with torch.no_grad():
        base = scores(image)[0]
        mask_score = torch.zeros(base.shape[0], *shape)
        mask_sum, score_sum = torch.zeros(shape), torch.zeros(base.shape[0])
        for start in range(0, n_masks, n_batch):
            b = min(n_batch, n_masks - start)
            grid = (torch.rand(b, 1, cells + 1, cells + 1, cells + 1, generator=gen) < keep).float()
            smooth = F.interpolate(grid, size=big, mode="trilinear", align_corners=False)
            shifts = torch.stack([torch.randint(0, c, (b,), generator=gen) for c in cell], dim=1)
            masks = torch.stack([smooth[i, 0, x:x + shape[0], y:y + shape[1], z:z + shape[2]]
                                 for i, (x, y, z) in enumerate(shifts.tolist())])  # (b, X, Y, Z)
            shown = masks[:, None].to(image.device)
            hidden = (floor if fill is None else fill[None]) * (1 - shown)
            s = scores(image * shown + hidden).float().cpu()  # (b, K)
            mask_score += torch.einsum("bk,bxyz->kxyz", s, masks)
            mask_sum += masks.sum(0)
            score_sum += s.sum(0)
    covariance = mask_score / n_masks - (score_sum / n_masks).view(-1, 1, 1, 1) * (mask_sum / n_masks)[None]
    return base, _normalise(F.relu(covariance)).to(image.device)


class _CountedScores(nn.Module):
    """``scores`` that count the volumes they score on ``bar``: a rise or occlusion map on a large grid
    takes minutes, and a user should see it move."""

    def __init__(self, scores: nn.Module, bar: Progress) -> None:
        super().__init__()
        self.scores, self.bar = scores, bar

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.scores(images)
        self.bar.update(self.bar.done + images.shape[0])
        return out


def occlusion_passes(shape: tuple[int, ...]) -> int:
    """Volumes :func:`occlusion_maps` scores on a grid of ``shape``: one unoccluded, then a patch
    position each (MONAI's sliding window of the default mask size, overlapping by half)."""
    from monai.data.utils import dense_patch_slices

    mask = tuple(max(2, int(np.ceil(n * OCCLUSION_FRACTION))) for n in shape)
    return 1 + len(dense_patch_slices(shape, mask, tuple(max(1, int(m * 0.5)) for m in mask)))


def relevance_maps(model: DualEncoder, image: torch.Tensor, directions: torch.Tensor,
                   method: str = "auto", progress: str | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Relevance of every voxel of ``image`` ``(1, 1, X, Y, Z)`` to each score
    ``scale * <image embedding, directions_k>`` (``directions`` ``(K, D)``): a finding's
    positive-minus-negative prompts, or the embedding of a similar case. Returns (``(K,)`` scores,
    ``(K, X, Y, Z)`` maps in [0, 1], the method used and why).

    ``auto``: Grad-CAM when the encoder's deepest spatial map has at least :data:`MIN_GRADCAM_CELLS`
    cells along each axis, rise otherwise. ``progress`` names the command in progress lines of the
    volumes rise or occlusion has scored (:class:`~medalign.progress.Progress`); ``None``: silent."""
    if method not in METHODS:
        raise InputError(f"--explain-method {method}: expected one of {', '.join(METHODS)}")
    scores = FindingScores(model, directions.float().to(image.device))
    layer = "model.image." + model.image.spatial_layer
    used = method
    if method == "auto":
        cells = spatial_map_shape(scores, image, layer)
        if min(cells) >= MIN_GRADCAM_CELLS:
            used = f"gradcam (auto: the deepest spatial map, {layer[len('model.image.'):]}, is {'x'.join(map(str, cells))})"
        else:
            used = (f"rise (auto: the deepest spatial map, {layer[len('model.image.'):]}, is {'x'.join(map(str, cells))}, "
                    f"under {MIN_GRADCAM_CELLS} cells an axis: too coarse for Grad-CAM to point)")
    if used.startswith("gradcam"):
        logits, maps = gradcam_maps(scores, image, layer)
        return logits, maps, used
    rise = used.startswith("rise")
    total = 1 + RISE_MASKS if rise else occlusion_passes(tuple(image.shape[2:]))
    with Progress(progress or "", total, "volumes", enabled=progress is not None) as bar:
        bar.start_line(f"{used.split(' ')[0]}: {total} volumes through the model")
        counted = _CountedScores(scores, bar)
        logits, maps = rise_maps(counted, image, n_masks=RISE_MASKS) if rise else occlusion_maps(counted, image)
    return logits, maps, used


def explain_image(model: DualEncoder, vocab, image: torch.Tensor, method: str = "auto",
                  progress: str | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """Relevance maps of every finding of ``vocab`` on one prepared ``image`` ``(1, 1, X, Y, Z)``:
    (``(K,)`` probabilities, ``(K, X, Y, Z)`` float32 maps in [0, 1], the method used and why)."""
    logits, maps, used = relevance_maps(model, image, prompt_directions(model, vocab), method, progress)
    return torch.sigmoid(logits).float().cpu().numpy(), maps.float().cpu().numpy(), used


def lesion_neighbourhood(mask: np.ndarray) -> np.ndarray:
    """A drawn lesion ``(X, Y, Z)`` (values > 0.5 inside) grown by one voxel in every direction, as bool:
    the pointing game's target (a map whose maximum falls in it points at the lesion)."""
    from scipy.ndimage import binary_dilation

    return binary_dilation(np.asarray(mask) > 0.5, structure=np.ones((3, 3, 3), bool))


def resample_to_grid(values: np.ndarray, affine: np.ndarray, target_shape: tuple[int, ...], target_affine: np.ndarray) -> np.ndarray:
    """``values`` ``(X, Y, Z)`` on the voxel-to-world ``affine`` sampled (trilinearly, 0 outside) at
    every voxel of the target grid, ``target_shape`` with ``target_affine``: a map on the model's
    grid brought onto the scanner's own grid, so it overlays without registration."""
    from scipy.ndimage import affine_transform

    to_source = np.linalg.inv(affine) @ target_affine  # target voxel -> source voxel
    # affine_transform computes each coordinate on the fly: 16x faster than map_coordinates on a
    # materialised (3, N) grid for a 512 x 512 x 40 scanner grid, the same values
    return affine_transform(values.astype(np.float32), to_source[:3, :3], offset=to_source[:3, 3], output_shape=tuple(target_shape),
                            order=1, mode="constant", cval=0.0, prefilter=False).astype(np.float32, copy=False)
