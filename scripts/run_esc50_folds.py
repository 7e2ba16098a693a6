#!/usr/bin/env python
"""ESC-50 five-fold cross-validation: one fine-tuning run per held-out fold, then the mean accuracy.

For each fold k it runs ``fairseq-hydra-train`` (the one installed next to this Python) with

    --config-dir CONFIG_DIR --config-name CONFIG_NAME
    task.data=ESC50_DIR/fold{k} model.model_path=MODEL_PATH checkpoint.save_dir=OUT/fold{k}
    common.user_dir=<repo>/eat_plugin hydra.run.dir=OUT/fold{k}/hydra  [extra overrides]

writing the run's output to OUT/fold{k}/train.log. It then reads the fold's best validation accuracy
(``extra_state["best"]`` of OUT/fold{k}/checkpoint_best.pt, or else the best ``*_accuracy`` in the
log), prints one line per fold and ``mean ± std`` over the folds (std: the SAMPLE standard deviation,
ddof=1, undefined for a single fold), and writes OUT/summary.json. Running it again resumes every
fold from its OUT/fold{k}/checkpoint_last.pt (fairseq's default ``checkpoint.restore_file``).

ESC50_DIR is the output of scripts/prepare_esc50.py (fold1 ... fold5, each with train.tsv, eval.tsv,
the .lbl files and label_descriptors.csv). Example:

    python scripts/run_esc50_folds.py --esc50-dir data/esc50 --model-path EAT-base_epoch30_pretrain.pt \
        --out runs/esc50 -- dataset.num_workers=4
"""

import argparse
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from eat_plugin.training_log import TrainingLogError, read_json_log

REPO = Path(__file__).resolve().parents[1]
METRIC = "accuracy"
FOLD_FILES = ("train.tsv", "eval.tsv", "label_descriptors.csv")
STD_KIND = "sample standard deviation (ddof=1)"

# runner(command, log_path) -> exit status; it must write the run's output to log_path
Runner = Callable[[List[str], Path], int]


class FoldError(RuntimeError):
    """A fold could not be run or evaluated; the message names the fold and the file to look at."""


@dataclass(frozen=True)
class FoldResult:
    fold: int
    accuracy: float
    source: str  # the checkpoint or log the value was read from


def run_logged(command: List[str], log_path: Path) -> int:
    """Run ``command``, stdout and stderr into ``log_path``; return its exit status."""
    with open(log_path, "w", encoding="utf-8") as log:
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode


def fold_dir(esc50_dir: Path, fold: int) -> Path:
    """``ESC50_DIR/fold{k}``, checked for the files prepare_esc50.py writes."""
    path = esc50_dir / f"fold{fold}"
    if not path.is_dir():
        raise FoldError(
            f"fold {fold}: {path} not found; --esc50-dir must be the output of scripts/prepare_esc50.py "
            f"(fold1 ... fold5)"
        )
    missing = [name for name in FOLD_FILES if not (path / name).is_file()]
    if missing:
        raise FoldError(f"fold {fold}: {path} lacks {', '.join(missing)}; re-run scripts/prepare_esc50.py")
    return path


def fold_command(args: argparse.Namespace, fold: int, overrides: Sequence[str]) -> List[str]:
    """The ``fairseq-hydra-train`` command line of one fold (absolute paths: hydra changes directory)."""
    save_dir = args.out / f"fold{fold}"
    return [
        str(Path(sys.executable).parent / "fairseq-hydra-train"),
        "--config-dir", str(args.config_dir),
        "--config-name", args.config_name,
        f"task.data={fold_dir(args.esc50_dir, fold)}",
        f"model.model_path={args.model_path}",
        f"checkpoint.save_dir={save_dir}",
        f"common.user_dir={REPO / 'eat_plugin'}",
        f"hydra.run.dir={save_dir / 'hydra'}",
        *overrides,
    ]


def best_from_checkpoint(path: Path, fold: int) -> Optional[float]:
    """``extra_state["best"]`` of ``checkpoint_best.pt``; checks that it tracked accuracy."""
    from eat_plugin.checkpoint import load_checkpoint  # torch and fairseq only when a checkpoint is read

    state = load_checkpoint(path)
    metric = ((state.get("cfg") or {}).get("checkpoint") or {}).get("best_checkpoint_metric", METRIC)
    if metric != METRIC:
        raise FoldError(
            f"fold {fold}: {path} tracked checkpoint.best_checkpoint_metric={metric!r}, not {METRIC!r}; "
            f"keep checkpoint.best_checkpoint_metric={METRIC}"
        )
    best = (state.get("extra_state") or {}).get("best")
    return None if best is None else float(best)


def best_from_log(path: Path) -> Optional[float]:
    """The last validation ``best_accuracy`` in a fairseq JSON log (read by ``eat_plugin.training_log``),
    else the highest validation ``accuracy``; None when the log has neither."""
    try:
        log = read_json_log(path, best_metric=METRIC, maximize=True)
    except TrainingLogError:
        return None
    running_best = log.get(log.valid_subset, f"best_{METRIC}")
    if running_best is not None:
        return float(running_best[1][-1])
    return None if log.best is None else log.best[1]


def fold_result(save_dir: Path, log_path: Path, fold: int) -> FoldResult:
    """The best validation accuracy of one finished fold run."""
    checkpoint = save_dir / "checkpoint_best.pt"
    if checkpoint.is_file():
        best = best_from_checkpoint(checkpoint, fold)
        if best is not None:
            return FoldResult(fold, best, str(checkpoint))
    best = best_from_log(log_path)
    if best is None:
        raise FoldError(
            f"fold {fold}: no validation {METRIC} found: {checkpoint} is missing (or has no best value) and "
            f"{log_path} reports none; check that the run validated (dataset.valid_subset) and see {log_path}"
        )
    return FoldResult(fold, best, str(log_path))


def run_fold(args: argparse.Namespace, fold: int, overrides: Sequence[str], runner: Runner) -> FoldResult:
    command = fold_command(args, fold, overrides)
    save_dir = args.out / f"fold{fold}"
    save_dir.mkdir(parents=True, exist_ok=True)
    log_path = save_dir / "train.log"
    print(f"fold {fold}: training, log {log_path}", flush=True)
    status = runner(command, log_path)
    if status != 0:
        raise FoldError(f"fold {fold}: fairseq-hydra-train exited with status {status}; see {log_path}")
    result = fold_result(save_dir, log_path, fold)
    print(f"fold {fold}: best {METRIC} {result.accuracy:.2f}", flush=True)
    return result


def summarise(results: Sequence[FoldResult]) -> Dict:
    """Per-fold values, their mean and sample standard deviation (None for one fold)."""
    values = np.array([r.accuracy for r in results], dtype=np.float64)
    return {
        "metric": METRIC,
        "folds": {str(r.fold): {METRIC: r.accuracy, "source": r.source} for r in results},
        "num_folds": len(results),
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if len(values) > 1 else None,
        "std_kind": STD_KIND,
    }


def format_summary(summary: Dict) -> str:
    lines = [f"{'fold':>4}  {METRIC:>8}  source"]
    for fold, entry in summary["folds"].items():
        lines.append(f"{fold:>4}  {entry[METRIC]:8.2f}  {entry['source']}")
    std = "n/a" if summary["std"] is None else f"{summary['std']:.2f}"
    lines.append(f"mean ± std: {summary['mean']:.2f} ± {std} over {summary['num_folds']} folds ({STD_KIND})")
    return "\n".join(lines)


def split_overrides(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """``[options] -- [hydra overrides]`` -> (options, overrides)."""
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--esc50-dir", type=Path, required=True, help="prepare_esc50.py output (fold1..fold5)")
    parser.add_argument("--model-path", type=Path, required=True, help="pre-trained EAT checkpoint (.pt)")
    parser.add_argument("--out", type=Path, required=True, help="output directory (OUT/fold{k}, summary.json)")
    parser.add_argument("--config-name", default="esc50", help="recipe name (default: esc50)")
    parser.add_argument("--config-dir", type=Path, default=REPO / "config" / "finetuning",
                        help="recipe directory (default: config/finetuning of this repository)")
    parser.add_argument("--folds", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="held-out folds to run")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return parser


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Absolute paths (hydra changes directory) and early, named errors for missing inputs."""
    args.esc50_dir, args.out, args.config_dir = (p.resolve() for p in (args.esc50_dir, args.out, args.config_dir))
    args.model_path = args.model_path.resolve()
    if not args.model_path.is_file():
        raise FoldError(f"--model-path {args.model_path}: checkpoint not found")
    if not (args.config_dir / f"{args.config_name}.yaml").is_file():
        raise FoldError(f"--config-name {args.config_name}: {args.config_dir / args.config_name}.yaml not found")
    if any(fold < 1 for fold in args.folds):
        raise FoldError(f"--folds {args.folds}: fold numbers start at 1")
    args.folds = sorted(set(args.folds))
    for fold in args.folds:
        fold_dir(args.esc50_dir, fold)
    return args


def main(argv: Optional[Sequence[str]] = None, runner: Runner = run_logged) -> int:
    options, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(options)
    try:
        args = check_args(args)
        if args.dry_run:
            for fold in args.folds:
                print(shlex.join(fold_command(args, fold, overrides)))
            return 0
        results = [run_fold(args, fold, overrides, runner) for fold in args.folds]
    except FoldError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    summary = summarise(results)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(format_summary(summary))
    print(f"summary: {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
