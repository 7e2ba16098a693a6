"""End to end on the CPU: a tiny pre-training and a fine-tuning from it through ``fairseq-hydra-train``, the
plugin and (``--official``) the official code, each as the user dir of the same recipes, alternating.

Both run ``config/pretraining/tiny.yaml`` (``--pretrain-updates``) on the demo data (``make demo``'s
clips: 2-s 44.1 kHz synthetic sounds, 6 classes), then ``config/finetuning/tiny.yaml``
(``--finetune-updates``, the demo's validation split as ``valid``) from their own pre-trained checkpoint.
The time of a run is the wall time of its ``fairseq-hydra-train`` process (imports, model build, data,
logging and checkpoint writes included): what a user waits for. The plugin runs with its defaults
(``task.clip_cache_mb`` 1024: each clip decoded once per run); ``--plugin-overrides`` adds command-line
overrides to its runs only (e.g. ``++task.clip_cache_mb=0`` to see the cache's share).

    .venv/bin/python bench/bench_e2e.py --official /path/to/EAT [--pairs 2] [--pretrain-updates 1000]

The official checkout is copied and its dataclass defaults patched as in ``bench_official.py`` (it needs
timm, scikit-learn and h5py importable); without ``--official`` only the plugin's times are printed.
Run it alone on the machine: another process on the cores distorts both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_official import missing_official_requirements, patched_official_copy  # noqa: E402

TRAIN = Path(sys.executable).with_name("fairseq-hydra-train")
NUM_CLASSES = 6  # make_demo_data.py's classes


def run(cmd: List[str], log: Path) -> float:
    """Wall seconds of ``cmd`` (stdout + stderr into ``log``); exits naming the log if it fails."""
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO).returncode
    seconds = time.perf_counter() - start
    if code != 0 or "done training" not in log.read_text():
        sys.exit(f"failed (exit {code}): {' '.join(cmd)}\n  see {log}")
    return seconds


def make_demo_data(work: Path) -> Path:
    sounds, data = work / "sounds", work / "data"
    for cmd in ([sys.executable, "scripts/make_demo_data.py", "--layout", "folders", "--out", str(sounds),
                 "--clips-per-class-per-fold", "8"],
                [sys.executable, "scripts/prepare_custom.py", "--folders", str(sounds), "--out", str(data)]):
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return data


def one_run(side: str, user_dir: Path, data: Path, out: Path, args: argparse.Namespace,
            extra: List[str]) -> Dict[str, float]:
    """Pre-train, then fine-tune from that checkpoint; seconds of each process."""
    if out.exists():
        shutil.rmtree(out)
    pre, fine = out / "pretrain", out / "finetune"
    common = [f"common.user_dir={user_dir}", f"task.data={data}"]
    pretrain = [str(TRAIN), "--config-dir", "config/pretraining", "--config-name", "tiny", *common,
                f"checkpoint.save_dir={pre}", f"hydra.run.dir={pre}",
                f"optimization.max_update={args.pretrain_updates}", *extra]
    finetune = [str(TRAIN), "--config-dir", "config/finetuning", "--config-name", "tiny", *common,
                f"checkpoint.save_dir={fine}", f"hydra.run.dir={fine}", f"model.model_path={pre}/checkpoint_last.pt",
                f"model.num_classes={NUM_CLASSES}", "dataset.valid_subset=valid",
                f"optimization.max_update={args.finetune_updates}", *extra]
    out.mkdir(parents=True)
    seconds = {"pretrain": run(pretrain, out / "pretrain.log"), "finetune": run(finetune, out / "finetune.log")}
    seconds["total"] = seconds["pretrain"] + seconds["finetune"]
    print(f"  {side:8s} pre-train {seconds['pretrain']:6.1f} s   fine-tune {seconds['finetune']:6.1f} s   "
          f"total {seconds['total']:6.1f} s", flush=True)
    return seconds


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", help="a checkout of github.com/cwx-worst-one/EAT at 06c1c34 (never modified)")
    parser.add_argument("--pairs", type=int, default=2, help="plugin / official run pairs (alternating)")
    parser.add_argument("--pretrain-updates", type=int, default=1000)
    parser.add_argument("--finetune-updates", type=int, default=300)
    parser.add_argument("--plugin-overrides", default="", help="space-separated overrides for the plugin's runs")
    parser.add_argument("--workdir", help="keep data, runs and logs here (default: a temporary directory)")
    parser.add_argument("--json", help="write the measurements here")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.official and missing_official_requirements():
        sys.exit(f"the official code needs {', '.join(missing_official_requirements())}: "
                 f"{sys.executable} -m pip install {' '.join(missing_official_requirements())}")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="eat_bench_e2e_"))
    work.mkdir(parents=True, exist_ok=True)
    data = make_demo_data(work)
    sides = {"plugin": (REPO / "eat_plugin", args.plugin_overrides.split())}
    if args.official:
        official_root = work / "official_root"
        if official_root.exists():
            shutil.rmtree(official_root)
        sides["official"] = (patched_official_copy(Path(args.official).resolve(), official_root), [])
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}, torch {torch.__version__}; pre-train {args.pretrain_updates} + fine-tune "
          f"{args.finetune_updates} updates (config/*/tiny.yaml), {args.pairs} pair(s); plugin overrides: "
          f"{args.plugin_overrides or 'none'}")
    results: Dict[str, List[Dict[str, float]]] = {side: [] for side in sides}
    for pair in range(args.pairs):
        print(f"pair {pair + 1}:", flush=True)
        for side, (user_dir, extra) in sides.items():
            results[side].append(one_run(side, user_dir, data, work / f"{side}_{pair}", args, extra))
    print()
    for stage in ("pretrain", "finetune", "total"):
        line = f"{stage:9s} plugin {statistics.median(r[stage] for r in results['plugin']):6.1f} s"
        if "official" in results:
            ratios = [p[stage] / o[stage] for p, o in zip(results["plugin"], results["official"])]
            line += (f"   official {statistics.median(r[stage] for r in results['official']):6.1f} s   "
                     f"plugin / official {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"runs and logs: {work}")


if __name__ == "__main__":
    main()
