#!/usr/bin/env python
"""Generate the built-in demo data sets: synthetic sounds in the ESC-50 published layout or in class folders,
and synthetic machine sounds in the MIMII layout.

``--layout esc50`` (default) writes OUT/meta/esc50.csv (the exact ESC-50 header) and
OUT/audio/{fold}-{src}-{take}-{target}.wav; ``--layout folders`` writes the same clips as
OUT/<class name>/{fold}-{src}-{take}-{target}.wav (one folder per class, no csv).
5 folds x 6 procedurally distinct classes x N clips, mono 16-bit PCM. Each clip draws its own random
parameters (pitch, rate, timing), adds a quieter sound of another class and a low noise floor, and is
scaled to a random peak in [0.3, 0.9].

``--layout mimii`` writes a tiny MIMII-layout set, OUT/fan/id_{00,02,04,06}/{normal,abnormal}/00000000.wav
(16 kHz by default): machine type ``fan``, machine ids 0, 2, 4, 6 (a machine-id head of 7 outputs).
Each id has its own signature: a blade-pass tone with its own fundamental and harmonic pattern plus a
resonance band of its own, over broadband fan noise (per clip: small pitch / level jitter). An
``abnormal`` clip is its id running 8-15 % off its rated speed plus one fault: periodic clicks (bearing
impacts), a high bearing tone, or amplitude modulation with a half-speed rub tone. --normal-per-id normal and
--anomalous-per-id abnormal clips per id.

The same arguments give byte-identical files.

Feed it to the same preparation a real user runs:

    python scripts/make_demo_data.py --out demo/esc50_synth
    python scripts/prepare_esc50.py --esc50-root demo/esc50_synth --out demo/manifests

    python scripts/make_demo_data.py --layout folders --out demo/folders_synth
    python scripts/prepare_custom.py --folders demo/folders_synth --out demo/custom_manifests

    python scripts/make_demo_data.py --layout mimii --out demo/mimii_synth
    python scripts/prepare_machine_sounds.py --root demo/mimii_synth --out demo/mimii_manifests
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf

from eat_plugin.console import run_cli, progress

NUM_FOLDS = 5
ESC50_SAMPLE_RATE, MIMII_SAMPLE_RATE = 44100, 16000  # the --sample-rate defaults
META_HEADER = ("filename", "fold", "target", "category", "esc10", "src_file", "take")

Generator = Callable[[np.random.Generator, int, int], np.ndarray]  # (rng, num_samples, sample_rate) -> (S,)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _max_freq(sample_rate: int) -> float:
    return 0.45 * sample_rate  # keep every partial below Nyquist


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.abs(x).max()), 1e-9)


def harmonic_tone(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A plucked harmonic tone: f0 in 110-880 Hz, 3-6 partials, attack then exponential decay."""
    t = np.arange(n) / sr  # (S,) seconds
    f0, tilt = _log_uniform(rng, 110, 880), rng.uniform(0.5, 1.5)
    partials = [k for k in range(1, int(rng.integers(3, 7)) + 1) if k * f0 < _max_freq(sr)]
    x = sum(k**-tilt * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) for k in partials)
    onset, attack, decay = rng.uniform(0, 0.2) * t[-1], rng.uniform(0.01, 0.05), rng.uniform(0.3, 2.0)
    since = np.clip(t - onset, 0, None)
    envelope = np.minimum(since / attack, 1.0) * np.exp(-since / decay) * (t >= onset)
    return _normalise(x * envelope)


def exponential_chirp(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """One exponential sweep (up or down, 150 Hz-6 kHz, at least an octave) over 40-100 % of the clip."""
    f_low = _log_uniform(rng, 150, 600)
    f_high = min(_log_uniform(rng, 2 * f_low, 6000), _max_freq(sr))
    f_start, f_end = (f_low, f_high) if rng.random() < 0.5 else (f_high, f_low)
    length = int(n * rng.uniform(0.4, 1.0))
    start = int(rng.integers(0, n - length + 1))
    duration = length / sr
    tau = np.arange(length) / sr  # (L,) seconds since the sweep started
    rate = np.log(f_end / f_start) / duration
    phase = 2 * np.pi * f_start * (np.exp(rate * tau) - 1) / rate
    x = np.zeros(n)
    x[start : start + length] = np.sin(phase) * np.hanning(length) ** 0.25
    return _normalise(x)


def noise_bursts(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Hann-windowed bursts of (optionally low-passed) white noise, 2-6 per second, 30-150 ms long."""
    x = np.zeros(n)
    count = max(1, int(round(rng.uniform(2, 6) * n / sr)))
    smoothing = rng.uniform(0.0, 0.9)  # one-pole low-pass y[i] = w[i] + a * y[i-1]; a = 0 is white
    kernel = smoothing ** np.arange(64)  # its impulse response, truncated where a**64 < 1e-2
    for _ in range(count):
        length = min(n, int(rng.uniform(0.03, 0.15) * sr))
        start = int(rng.integers(0, n - length + 1))
        burst = np.convolve(rng.standard_normal(length), kernel)[:length]
        x[start : start + length] += _normalise(burst) * np.hanning(length) * rng.uniform(0.5, 1.0)
    return _normalise(x)


def click_train(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A regular click train, 4-30 clicks per second with up to 10 % jitter; clicks ring for 1-3 ms."""
    rate, jitter = rng.uniform(4, 30), rng.uniform(0, 0.1)
    ring_hz, decay = min(rng.uniform(1500, 4000), _max_freq(sr)), rng.uniform(0.001, 0.003)
    length = int(5 * decay * sr) + 1
    tau = np.arange(length) / sr  # (length,) seconds
    click = np.exp(-tau / decay) * np.cos(2 * np.pi * ring_hz * tau)
    x = np.zeros(n + length)
    onset = rng.uniform(0, 1 / rate)
    while onset * sr < n:
        start = int(onset * sr)
        x[start : start + length] += click * rng.choice([-1.0, 1.0])
        onset += (1 + rng.uniform(-jitter, jitter)) / rate
    return _normalise(x[:n])


def tremolo_tone(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A sine carrier (250-2000 Hz) amplitude-modulated at 2-12 Hz with depth 0.5-1."""
    t = np.arange(n) / sr
    carrier, mod, depth = _log_uniform(rng, 250, min(2000, _max_freq(sr))), rng.uniform(2, 12), rng.uniform(0.5, 1)
    envelope = 1 - depth * 0.5 * (1 + np.cos(2 * np.pi * mod * t + rng.uniform(0, 2 * np.pi)))
    return _normalise(envelope * np.sin(2 * np.pi * carrier * t + rng.uniform(0, 2 * np.pi)))


def mains_hum(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """50 or 60 Hz mains hum with 4-12 harmonics of random, decaying strength (odd ones stronger)."""
    t = np.arange(n) / sr
    base = 50.0 if rng.random() < 0.5 else 60.0
    base *= 1 + rng.uniform(-0.01, 0.01)
    x = np.zeros(n)
    for k in range(1, int(rng.integers(4, 13)) + 1):
        if k * base < _max_freq(sr):
            weight = rng.uniform(0.3, 1.0) * (1.0 if k % 2 else 0.4) / k**0.7
            x += weight * np.sin(2 * np.pi * k * base * t + rng.uniform(0, 2 * np.pi))
    return _normalise(x)


CLASSES: Dict[str, Generator] = {
    "harmonic_tone": harmonic_tone,
    "exponential_chirp": exponential_chirp,
    "noise_bursts": noise_bursts,
    "click_train": click_train,
    "tremolo_tone": tremolo_tone,
    "mains_hum": mains_hum,
}


def make_clip(rng: np.random.Generator, target: int, num_samples: int, sample_rate: int) -> np.ndarray:
    """One clip of class ``target``: main sound + quieter other-class sound + noise floor, as int16 ``(S,)``."""
    names = list(CLASSES)
    main = CLASSES[names[target]](rng, num_samples, sample_rate)
    other = names[int(rng.choice([i for i in range(len(names)) if i != target]))]
    secondary = CLASSES[other](rng, num_samples, sample_rate) * rng.uniform(0.05, 0.2)
    floor = rng.standard_normal(num_samples) * rng.uniform(0.002, 0.008)
    x = _normalise(main + secondary + floor) * rng.uniform(0.3, 0.9)
    return np.round(x * 32767).astype(np.int16)


def plan_clips(clips_per_class_per_fold: int) -> List[Dict[str, object]]:
    """Meta rows, one per clip, in generation order (fold, class, index); src ids are unique."""
    rows = []
    for fold in range(1, NUM_FOLDS + 1):
        for target, category in enumerate(CLASSES):
            for index in range(clips_per_class_per_fold):
                src = 100000 + len(rows)
                rows.append(
                    {
                        "filename": f"{fold}-{src}-A-{target}.wav",
                        "fold": fold,
                        "target": target,
                        "category": category,
                        "esc10": "False",
                        "src_file": src,
                        "take": "A",
                        "index": index,
                    }
                )
    return rows


def write_meta(path: Path, rows: Sequence[Dict[str, object]]) -> None:
    """``meta/esc50.csv`` with the ESC-50 header, rows sorted by file name as in the published csv."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(META_HEADER)
        for row in sorted(rows, key=lambda r: r["filename"]):
            writer.writerow([row[c] for c in META_HEADER])


def clip_path(out: Path, row: Dict[str, object], layout: str) -> Path:
    """Where a clip goes: ``OUT/audio/<file>`` (esc50) or ``OUT/<class name>/<file>`` (folders)."""
    return out / ("audio" if layout == "esc50" else str(row["category"])) / str(row["filename"])


# ----------------------------------------------------------------------------------------------------
# Machine sounds (--layout mimii)

MIMII_TYPE = "fan"
MIMII_STREAM = 0x6D696D69  # "mimi": the machine clips' random streams
# machine id -> (blade-pass fundamental in Hz, weights of harmonics 1..4, resonance band centre in Hz)
FAN_SIGNATURES: Dict[int, Tuple[float, Tuple[float, ...], float]] = {
    0: (110.0, (1.0, 0.5, 0.25, 0.1), 700.0),
    2: (175.0, (0.3, 1.0, 0.2, 0.5), 1300.0),
    4: (260.0, (1.0, 0.1, 0.7, 0.05), 2200.0),
    6: (390.0, (0.5, 0.6, 0.1, 1.0), 3300.0),
}
FAULTS = ("clicks", "bearing_tone", "modulation")


def _shaped_noise(rng: np.random.Generator, n: int, sr: int, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """White noise shaped in frequency by ``gain(freqs_hz)`` (FFT domain), normalised."""
    spectrum = np.fft.rfft(rng.standard_normal(n)) * gain(np.fft.rfftfreq(n, 1 / sr))
    return _normalise(np.fft.irfft(spectrum, n))


def fan_clip(rng: np.random.Generator, machine_id: int, n: int, sr: int, speed: float = 1.0) -> np.ndarray:
    """A clip of fan ``machine_id`` running at ``speed`` times its rated speed (1: a normal clip): its tone +
    its resonance band + broadband noise, float ``(S,)``."""
    f0, weights, centre = FAN_SIGNATURES[machine_id]
    t = np.arange(n) / sr
    f0 *= speed * (1 + rng.uniform(-0.02, 0.02))
    tone = sum(w * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
               for k, w in enumerate(weights, start=1) if k * f0 < _max_freq(sr))
    centre = min(centre, 0.8 * _max_freq(sr))
    band = _shaped_noise(rng, n, sr, lambda f: np.exp(-0.5 * ((f - centre) / (0.08 * centre)) ** 2))
    broadband = _shaped_noise(rng, n, sr, lambda f: 1 / np.sqrt(np.maximum(f, 20.0)))  # pink-ish fan noise
    return (rng.uniform(0.8, 1.2) * 0.5 * _normalise(tone) + rng.uniform(0.8, 1.2) * 0.35 * band
            + rng.uniform(0.8, 1.2) * 0.3 * broadband)


def add_fault(rng: np.random.Generator, x: np.ndarray, machine_id: int, sr: int) -> np.ndarray:
    """``x`` with one fault drawn from ``FAULTS`` added, float ``(S,)``."""
    n, t = len(x), np.arange(len(x)) / sr
    fault = FAULTS[int(rng.integers(len(FAULTS)))]
    if fault == "clicks":  # bearing impacts: 6-15 per second, ringing at 2.5-4.5 kHz
        rate = rng.uniform(6, 15)
        ring = min(rng.uniform(2500, 4500), _max_freq(sr))
        tau = np.arange(int(0.004 * sr)) / sr
        click = np.exp(-tau / 0.0008) * np.sin(2 * np.pi * ring * tau)
        clicks = np.zeros(n + len(click))
        for start in (np.arange(rng.uniform(0, 1 / rate), n / sr, 1 / rate) * sr).astype(int):
            clicks[start : start + len(click)] += click
        return x + 0.9 * _normalise(clicks[:n]) * np.abs(x).max()
    if fault == "bearing_tone":  # a worn bearing: a high, slightly wobbling tone
        freq = min(rng.uniform(4500, 6000), _max_freq(sr))
        phase = 2 * np.pi * freq * t + 3 * np.sin(2 * np.pi * rng.uniform(1, 3) * t)
        return x + 0.35 * np.sin(phase) * np.abs(x).max()
    f0 = FAN_SIGNATURES[machine_id][0]  # imbalance / rub: amplitude modulation plus a half-speed tone
    envelope = 1 - 0.7 * 0.5 * (1 + np.cos(2 * np.pi * rng.uniform(3, 8) * t + rng.uniform(0, 2 * np.pi)))
    return x * envelope + 0.4 * np.sin(2 * np.pi * 0.5 * f0 * t) * np.abs(x).max()


def plan_machine_clips(normal_per_id: int, anomalous_per_id: int) -> List[Tuple[int, str, int]]:
    """``(machine id, MIMII folder 'normal'/'abnormal', index)`` per clip, in generation order."""
    return [(machine_id, folder, index)
            for machine_id in FAN_SIGNATURES
            for folder, count in (("normal", normal_per_id), ("abnormal", anomalous_per_id))
            for index in range(count)]


def machine_clip_path(out: Path, machine_id: int, folder: str, index: int) -> Path:
    return out / MIMII_TYPE / f"id_{machine_id:02d}" / folder / f"{index:08d}.wav"


def run_mimii(args: argparse.Namespace, sample_rate: int) -> int:
    out = Path(args.out)
    num_samples = int(round(args.seconds * sample_rate))
    plan = plan_machine_clips(args.normal_per_id, args.anomalous_per_id)
    for machine_id, folder, index in progress(plan, "writing demo machine clips"):
        rng = np.random.default_rng([args.seed, MIMII_STREAM, machine_id, int(folder == "abnormal"), index])
        # a faulty fan also runs off its rated speed (a slipping belt, a dragging bearing): 8-15 % slow or fast
        speed = 1.0 if folder == "normal" else 1 + rng.choice([-1, 1]) * rng.uniform(0.08, 0.15)
        x = fan_clip(rng, machine_id, num_samples, sample_rate, speed)
        if folder == "abnormal":
            x = add_fault(rng, x, machine_id, sample_rate)
        wave = np.round(_normalise(x) * rng.uniform(0.3, 0.9) * 32767).astype(np.int16)  # (S,)
        path = machine_clip_path(out, machine_id, folder, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wave, sample_rate, subtype="PCM_16", format="WAV")
    print(
        f"wrote {len(plan)} clips (machine type {MIMII_TYPE}, ids {', '.join(map(str, FAN_SIGNATURES))} x "
        f"({args.normal_per_id} normal + {args.anomalous_per_id} abnormal), {args.seconds:g} s at {sample_rate} Hz) "
        f"to {out / MIMII_TYPE}/id_NN/{{normal,abnormal}}/"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    if args.layout == "mimii":
        return run_mimii(args, args.sample_rate or MIMII_SAMPLE_RATE)
    sample_rate = args.sample_rate or ESC50_SAMPLE_RATE
    out = Path(args.out)
    num_samples = int(round(args.seconds * sample_rate))
    rows = plan_clips(args.clips_per_class_per_fold)
    for row in progress(rows, "writing demo clips"):
        # One generator per clip, keyed by its position: clips do not depend on how many others exist.
        rng = np.random.default_rng([args.seed, row["fold"], row["target"], row["index"]])
        wave = make_clip(rng, row["target"], num_samples, sample_rate)  # (S,) int16
        path = clip_path(out, row, args.layout)
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wave, sample_rate, subtype="PCM_16", format="WAV")
    if args.layout == "esc50":
        write_meta(out / "meta" / "esc50.csv", rows)
        where = f"{out / 'audio'} and {out / 'meta' / 'esc50.csv'}"
    else:
        where = f"{out}/<class name>/ ({', '.join(CLASSES)})"
    print(
        f"wrote {len(rows)} clips ({len(CLASSES)} classes x {NUM_FOLDS} folds x {args.clips_per_class_per_fold}, "
        f"{args.seconds:g} s at {sample_rate} Hz) to {where}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (esc50: gets meta/esc50.csv and audio/)"
    )
    parser.add_argument(
        "--layout",
        choices=("esc50", "folders", "mimii"),
        default="esc50",
        help="esc50: the ESC-50 published layout (default); folders: OUT/<class name>/<clip>.wav, "
        "the input of scripts/prepare_custom.py --folders; mimii: machine sounds "
        "OUT/fan/id_NN/{normal,abnormal}/<clip>.wav, the input of scripts/prepare_machine_sounds.py",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--clips-per-class-per-fold",
        type=int,
        default=2,
        metavar="N",
        help="clips of each class in each fold (default: 2)",
    )
    parser.add_argument(
        "--sample-rate", type=int, default=None, metavar="HZ",
        help=f"sample rate in Hz (default: {ESC50_SAMPLE_RATE} as ESC-50; mimii: {MIMII_SAMPLE_RATE} as MIMII)",
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="clip length in seconds (default: 2.0)")
    mimii = parser.add_argument_group("--layout mimii")
    mimii.add_argument(
        "--normal-per-id", type=int, default=8, metavar="N", help="normal clips per machine id (default: 8)"
    )
    mimii.add_argument(
        "--anomalous-per-id", type=int, default=3, metavar="N", help="abnormal clips per machine id (default: 3)"
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.clips_per_class_per_fold < 1 or (args.sample_rate or 8000) < 8000 or not 0.05 <= args.seconds <= 60:
        parser.error("need --clips-per-class-per-fold >= 1, --sample-rate >= 8000 and 0.05 <= --seconds <= 60")
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    if args.normal_per_id < 2 or args.anomalous_per_id < 0:
        parser.error("need --normal-per-id >= 2 (train and test) and --anomalous-per-id >= 0")
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
