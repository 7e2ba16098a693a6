"""Entries -> kept clips, the stratified split, the summary statistics.

``custom_inputs.py`` lists what the user gives (class folders or a CSV/TSV) and normalises its labels;
``scripts/prepare_custom.py`` is the command line; the rules live in these two modules, once.

Classes:
    The sorted label ids of the kept clips (class index = position). A class left without clips after
    the bad files are skipped is dropped with a warning.

Split (when no split column gives it):
    Stratified: clips are grouped by label (a multi-label clip by its rarest label, counted over the
    whole set, ties by id: the usual heuristic), each group sorted by path and shuffled with
    ``numpy.random.default_rng([seed, crc32(id)])``, so the split depends only on the seed, the class
    and its paths. A group of n clips gives ``max(1, round_half_up(n * fraction))`` clips to valid and
    to test when n >= the number of splits; smaller groups give one clip to train, then valid, then test,
    with a warning. Rows of every split are sorted by path.

Statistics (``norm_stats``):
    For every training clip: ``read_audio`` -> ``to_mono_16k`` -> ``wave_to_fbank`` -> ``pad_or_crop``
    to the suggested ``target_length`` (what the model sees before normalisation, zero padding included,
    as AST/EAT compute theirs); mean and population std pooled over every value of every clip, from
    float64 sums and sums of squares.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from eat_plugin.console import progress
from eat_plugin.data import prepare
from eat_plugin.data.custom_inputs import Entry, Listing, normalise_labels
from eat_plugin.data.fbank import AudioError, num_fbank_frames, pad_or_crop, read_audio, to_mono_16k, wave_to_fbank
from eat_plugin.layout import PATCH_FRAMES, SAMPLE_RATE
from eat_plugin.data.manifest import Clip
from eat_plugin.data.prepare import LayoutError, Skipped, SplitScan

SPLITS = ("train", "valid", "test")
SILENT_PEAK = 1.0 / 32768  # one 16-bit step
WINDOW_SECONDS = 0.025  # one fbank window: a shorter clip has no features
MAX_TARGET_LENGTH = 1024
DURATION_KEYS = {"min": 0, "p5": 5, "p50": 50, "p95": 95, "max": 100}


@dataclass(frozen=True)
class ScannedClip:
    clip: Clip
    seconds: float
    split: Optional[str]


@dataclass
class Prepared:
    """The decoded, labelled, split data set, ready for ``prepare.write_dataset`` and ``prepare.summarize``."""

    root: Path
    splits: Dict[str, SplitScan]
    label_ids: List[str]
    label_names: List[str]
    seconds: List[float]
    unsplit: List[Skipped]
    warnings: List[str]
    label_conflicts: List[List[str]]
    duplicates: List[str]

    @property
    def multi_label(self) -> bool:
        return any(len(clip.label_ids) > 1 for scan in self.splits.values() for clip in scan.clips)


# ----------------------------------------------------------------------------------------------------
# Decoding


def inspect_clip(path: Path, min_seconds: float) -> Tuple[int, float]:
    """Decode ``path``; return ``(native samples, seconds)`` or raise ``AudioError`` saying why it is unusable."""
    wave, sample_rate = read_audio(path)  # (S, C)
    seconds = wave.shape[0] / sample_rate
    peak = float(np.abs(wave).max())
    if peak < SILENT_PEAK:
        raise AudioError(f"{path}: silent: peak |x| = {peak:.3g} < 1/32768 (one 16-bit step)")
    if seconds < max(min_seconds, WINDOW_SECONDS):
        raise AudioError(f"{path}: too short: {seconds:.3f} s < min {max(min_seconds, WINDOW_SECONDS):g} s")
    return int(wave.shape[0]), seconds


def scan(entries: Sequence[Entry], root: Path, min_seconds: float, show_progress: Optional[bool] = None):
    """Decode every entry once: ``(kept clips, [(given split, Skipped)])``."""
    kept: List[ScannedClip] = []
    skipped: List[Tuple[Optional[str], Skipped]] = []
    paths = [Path(entry.path) for entry in entries]
    results = prepare.probe_each(paths, root, lambda path: inspect_clip(path, min_seconds), "decoding clips",
                                 show_progress)
    for entry, result in zip(entries, results):
        if isinstance(result, Skipped):
            skipped.append((entry.split, result))
            continue
        relpath, (num_samples, seconds) = result
        kept.append(ScannedClip(Clip(relpath, num_samples, entry.labels), seconds, entry.split))
    return kept, skipped


# ----------------------------------------------------------------------------------------------------
# Split


def split_names(test_fraction: float) -> Tuple[str, ...]:
    return SPLITS if test_fraction > 0 else SPLITS[:2]


def held_out_sizes(n: int, fractions: Sequence[float]) -> List[int]:
    """Clips of one group for each held-out split (the rest go to train).

    ``max(1, round_half_up(n * f))`` each, reduced (largest first) until train keeps one, when ``n`` is at
    least the number of splits; otherwise one clip each to train, then the held-out splits in order.
    """
    if n < len(fractions) + 1:
        return [1 if i + 1 < n else 0 for i in range(len(fractions))]
    sizes = [max(1, math.floor(n * f + 0.5)) for f in fractions]
    while sum(sizes) > n - 1:
        sizes[sizes.index(max(sizes))] -= 1
    return sizes


def stratified_split(
    clips: Sequence[Clip], valid_fraction: float, test_fraction: float, seed: int = 0
) -> Tuple[Dict[str, List[Clip]], List[str]]:
    """Split ``clips`` per class (see the module docstring): ``({split: clips sorted by path}, warnings)``."""
    names = split_names(test_fraction)
    fractions = {"valid": valid_fraction, "test": test_fraction}
    counts = Counter(label for clip in clips for label in clip.label_ids)
    groups: Dict[str, List[Clip]] = defaultdict(list)
    for clip in sorted(clips, key=lambda c: c.relpath):
        groups[min(clip.label_ids, key=lambda label: (counts[label], label))].append(clip)
    out: Dict[str, List[Clip]] = {split: [] for split in names}
    for key in sorted(groups):
        members = groups[key]
        order = np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))]).permutation(len(members))
        start = 0
        for split, size in zip(names[1:], held_out_sizes(len(members), [fractions[s] for s in names[1:]])):
            out[split] += [members[i] for i in order[start : start + size]]
            start += size
        out["train"] += [members[i] for i in order[start:]]
    for split in names:
        out[split].sort(key=lambda c: c.relpath)
    return out, _split_warnings(out, counts, len(names))


def _split_warnings(splits: Dict[str, List[Clip]], counts: Counter, num_splits: int) -> List[str]:
    warnings = []
    few = sorted(label for label, n in counts.items() if n < num_splits)
    if few:
        listed = ", ".join(f"{label!r} ({counts[label]} clip{'s' * (counts[label] > 1)})" for label in few)
        warnings.append(
            f"class(es) with fewer clips than splits ({num_splits}) cannot be in every split; their clips go to "
            f"train first, then valid: {listed}"
        )
    present = {split: {label for clip in clips for label in clip.label_ids} for split, clips in splits.items()}
    for label in sorted(set(counts) - set(few)):
        missing = [split for split in splits if label not in present[split]]
        if missing:
            warnings.append(
                f"class {label!r} ({counts[label]} clips) is missing from {', '.join(missing)}: multi-label clips "
                f"are stratified by their rarest label only"
            )
    return warnings


# ----------------------------------------------------------------------------------------------------
# The whole preparation


def build(
    listing: Listing,
    merge_similar: bool = False,
    min_seconds: float = 0.1,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    show_progress: Optional[bool] = None,
) -> Prepared:
    """Labels, decoding, class table and split of ``listing`` (nothing written)."""
    entries, unlabelled, names, conflicts, warnings = normalise_labels(listing.entries, merge_similar)
    skipped = list(listing.skipped)
    skipped += [(e.split, Skipped(str(e.path), f"no label: empty label cell at {e.where}")) for e in unlabelled]
    kept, bad = scan(entries, listing.root, min_seconds, show_progress)
    skipped += bad
    label_ids = sorted({label for item in kept for label in item.clip.label_ids})
    for lid in sorted(set(names) - set(label_ids)):
        warnings.append(f"class {names[lid]!r} has no usable clip left after skipping; dropped from the class table")
    if listing.has_split_column:
        split_clips = _given_splits(kept, {split for split, _ in skipped}, listing.description)
    else:
        split_clips, split_warnings = stratified_split([i.clip for i in kept], valid_fraction, test_fraction, seed)
        warnings += split_warnings
    splits = {s: SplitScan(clips, [skip for given, skip in skipped if given == s]) for s, clips in split_clips.items()}
    return Prepared(
        root=listing.root,
        splits=splits,
        label_ids=label_ids,
        label_names=[names[lid] for lid in label_ids],
        seconds=[item.seconds for item in kept],
        unsplit=[skip for given, skip in skipped if given is None],
        warnings=listing.warnings + warnings,
        label_conflicts=conflicts,
        duplicates=listing.duplicates,
    )


def _given_splits(kept: Sequence[ScannedClip], skipped_splits: set, description: str) -> Dict[str, List[Clip]]:
    """The split column's splits (every one named in it, even if all its clips were skipped), rows sorted by path."""
    named = {item.split for item in kept} | skipped_splits
    splits = {s: sorted((i.clip for i in kept if i.split == s), key=lambda c: c.relpath) for s in SPLITS if s in named}
    if "train" not in splits:
        raise LayoutError(f"{description}: no row has split 'train'; training (and its statistics) need one")
    return splits


# ----------------------------------------------------------------------------------------------------
# Statistics


def duration_percentiles(seconds: Sequence[float]) -> Dict[str, float]:
    """``{"min", "p5", "p50", "p95", "max"}`` of ``seconds`` (numpy percentiles, linear)."""
    values = np.percentile(np.asarray(seconds, dtype=np.float64), list(DURATION_KEYS.values()), method="linear")
    return {key: float(v) for key, v in zip(DURATION_KEYS, values)}


def suggest_target_length(seconds: float) -> int:
    """The smallest multiple of 16 fbank frames covering ``seconds`` at 16 kHz, in [16, 1024].

    Frames are Kaldi's with snip_edges: ``1 + (samples - 400) // 160`` (1.0 s -> 98 frames -> 112).
    """
    frames = num_fbank_frames(int(round(seconds * SAMPLE_RATE)))
    return min(MAX_TARGET_LENGTH, max(PATCH_FRAMES, -(-frames // PATCH_FRAMES) * PATCH_FRAMES))


def fbank_norm_stats(
    paths: Iterable[Path], target_length: int, show_progress: Optional[bool] = None
) -> Tuple[float, float]:
    """Mean and population std of the padded/cropped fbank over ``paths`` (see the module docstring)."""
    paths = list(paths)
    total = total_sq = 0.0
    count = 0
    for path in progress(paths, "fbank statistics", show_progress):
        wave, sample_rate = read_audio(path)  # (S, C)
        fbank = wave_to_fbank(to_mono_16k(wave, sample_rate, str(path)), str(path))  # (n_frames, 128)
        fbank = pad_or_crop(fbank, target_length).double()  # (T, 128)
        total += float(fbank.sum())
        total_sq += float((fbank * fbank).sum())
        count += fbank.numel()
    if not count:
        raise LayoutError("no training clips to compute the fbank statistics on")
    mean = total / count
    return mean, math.sqrt(max(total_sq / count - mean * mean, 0.0))


def overrides(target_length: int, mean: float, std: float) -> str:
    """The hydra overrides of the fine-tuning recipe for these statistics."""
    return f"task.target_length={target_length} task.norm_mean={mean:.4f} task.norm_std={std:.4f}"


def statistics(prepared: Prepared, show_progress: Optional[bool] = None) -> Dict:
    """The summary.json keys that describe the audio: durations, target_length, norm_stats, overrides."""
    durations = duration_percentiles(prepared.seconds)
    target_length = suggest_target_length(durations["p95"])
    train = prepared.splits["train"].clips
    mean, std = fbank_norm_stats((prepared.root / c.relpath for c in train), target_length, show_progress)
    return {
        "duration_seconds": durations,
        "target_length": target_length,
        "norm_stats": {"mean": mean, "std": std, "split": "train", "clips": len(train), "target_length": target_length},
        "overrides": overrides(target_length, mean, std),
    }
