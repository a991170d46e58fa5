"""Torch datasets over cached volumes: image, report text and soft finding labels per study."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from medalign.data.augment import draw_intensity_jitter
from medalign.prep.manifest import Manifest
from medalign.reports.report_text import split_sections, split_sentences


def as_unit_float(image: torch.Tensor) -> torch.Tensor:
    """A cached volume as float32 in ``[0, 1]``: integer caches hold 256 levels (``/ 255``)."""
    return image.float() if image.is_floating_point() else image.float() / 255.0


def as_unit_array(volume: np.ndarray) -> np.ndarray:
    """:func:`as_unit_float` for NumPy arrays (e.g. a memory-mapped cache volume), float32."""
    return np.asarray(volume, dtype=np.float32) / (255.0 if np.issubdtype(volume.dtype, np.integer) else 1.0)


#: what an uncertain label (-1) means in the soft targets (CheXpert's U-ones / U-zeros idea)
UNCERTAIN_AS = {"positive": 1.0, "negative": 0.0, "half": 0.5, "ignore": float("nan")}


def soft_labels(labels: np.ndarray, uncertain: str = "half") -> np.ndarray:
    """Labels for soft targets ``(N, K)``: present 1, negated or not mentioned 0, uncertain as the
    policy says (positive 1, negative 0, half 0.5, ignore NaN: that finding does not count in the
    similarity of a pair where either study is uncertain about it)."""
    if uncertain not in UNCERTAIN_AS:
        raise ValueError(f"uncertain policy {uncertain!r} is not one of {', '.join(UNCERTAIN_AS)}")
    y = np.nan_to_num(labels.astype(np.float32), nan=0.0)
    y[y < 0] = UNCERTAIN_AS[uncertain]
    return y


def report_sentences(text: str) -> list[str]:
    """The sentences of a report's FINDINGS and IMPRESSION sections."""
    sections = split_sections(text)
    return split_sentences(sections["findings"] + "\n" + sections["impression"])


def sample_sentences(sentences: list[str], rng: np.random.Generator) -> str | None:
    """A random non-empty subset of the report's sentences, shuffled: teaches the text tower that
    one sentence ("No pleural effusion.") means what it means inside a whole report, so that
    short zero-shot prompts land near the studies they describe (sentence sampling, as in CXR-CLIP)."""
    if len(sentences) <= 1:
        return None  # nothing to sample from: keep the whole report
    keep = [s for s in sentences if rng.random() < 0.5] or [sentences[int(rng.integers(len(sentences)))]]
    rng.shuffle(keep)
    return " ".join(s + "." for s in keep)


class StudyDataset(Dataset):
    """One item per study: ``{"image": (1, X, Y, Z), "text": str, "text_is_report": bool, "labels": (K,), "index": int}``
    (plus ``"intensity_jitter": (2,)`` with ``device_intensity``); the image
    is in the cache's dtype (float32 in [0, 1] once the loader has jittered its intensity);
    :meth:`DualEncoder.encode_image` converts it.

    Volumes are memory-mapped; ``augment`` (a MONAI transform on the (1, X, Y, Z) tensor) runs on the
    fly. An item is asked for as ``i`` or as ``(i, draw)`` (from :class:`ResumableSampler`): its
    augmentation and sentence sampling are then seeded by ``(seed, draw)``, the same in any worker,
    process or resumed run.
    """

    def __init__(self, manifest: Manifest, augment=None, text_field: str = "report", sentence_sampling: float = 0.0, seed: int = 0,
                 device_intensity: float = 0.0, uncertain: str = "half") -> None:
        self.manifest = manifest
        self.augment = augment
        #: > 0: each item carries an intensity jitter ``(factor, offset)`` for the device to apply, and
        #: the volume stays in the cache's dtype through crop and flips
        self.device_intensity = device_intensity
        self.text_field = text_field
        self.sentence_sampling = sentence_sampling
        self.seed = seed
        self.labels = soft_labels(manifest.labels(), uncertain)
        texts = manifest.columns[text_field]
        self.sentences = [report_sentences(t or "") for t in texts] if sentence_sampling > 0 else None

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        i, draw = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), int(key))
        rng = np.random.default_rng((self.seed, draw))
        # copy-on-write map: the tensor reads the page cache directly (collating is the one copy) and
        # a transform writing in place would change this process's pages, never the file
        volume = np.load(self.manifest.volume_path(i), mmap_mode="c")
        # the cache's dtype (uint8 for the presets) travels to the device, which converts it: fewer bytes
        image = torch.from_numpy(volume)[None]
        if self.augment is not None:
            if not self.device_intensity:
                image = as_unit_float(image)
            # one RandomState per item shared by the random steps (seeding each step separately costs more than the steps)
            state = np.random.RandomState(int(rng.integers(2**31)))
            for step in getattr(self.augment, "transforms", [self.augment]):
                if hasattr(step, "set_random_state"):
                    step.set_random_state(state=state)
            image = self.augment(image)
            # MONAI returns a MetaTensor; its per-op metadata bookkeeping slows every forward and breaks
            # torch.compile's graph, and nothing downstream reads it: the hot path carries plain tensors
            image = image.as_tensor() if hasattr(image, "as_tensor") else image
        jitter = draw_intensity_jitter(rng, self.device_intensity) if self.device_intensity else None
        text = self.manifest.columns[self.text_field][i] or ""
        sampled = None
        if self.sentences is not None and rng.random() < self.sentence_sampling:
            sampled = sample_sentences(self.sentences[i], rng)
        item = {
            "image": image,
            "text": sampled or text,
            "text_is_report": sampled is None,  # False: a sentence sample, not in the token cache
            "labels": torch.from_numpy(self.labels[i]),
            "index": i,
        }
        if jitter is not None:
            item["intensity_jitter"] = torch.tensor(jitter, dtype=torch.float32)
        return item
