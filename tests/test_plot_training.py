"""eat_plugin.training_log, eat_plugin.plots (training figures) and scripts/plot_training.py.

A hand-written fairseq log with known values (junk lines included) is parsed and plotted; fairseq's own
progress bar (JsonProgressBar + TensorboardProgressBarWrapper) then writes the same values as JSON lines
and TensorBoard events, and both readers must return exactly those values.
"""

import logging

import numpy as np
import pytest
from fairseq.logging import progress_bar

from eat_plugin import plots
from eat_plugin.training_log import (TrainingLog, TrainingLogError, maximized_by_name, read_json_log,
                                     read_tensorboard, read_training_log)
from helpers import load_script

plot_training = load_script("plot_training")

# A pre-training-like train_inner section, end-of-epoch train lines and an 'eval' validation subset (ESC-50's name).
LOG = """\
[2026-11-23 10:00:00,000][fairseq_cli.train][INFO] - {'_name': None, 'common': {'log_format': 'json'}}
[2026-11-23 10:00:00,500][fairseq.trainer][INFO] - begin training epoch 1
not a log line at all
[2026-11-23 10:00:00,600][fairseq.tasks][INFO] - {"no": "step here"}
[2026-11-23 10:00:01,000][train_inner][INFO] - {"epoch": 1, "update": 0.25, "loss": "4.5", "loss_cls": "3.25", \
"loss_IMAGE_regression": "1.25", "target_var": "0.985", "pred_var": "0.5", "ema_decay": "900", "masked_pct": "0.8125", \
"num_updates": "15", "lr_default": "0.0005", "lr_0a1b": "0.00025", "lr_ffff": "0.0005", "gnorm": "17.5", \
"layer_stats": [1.0, 2.0], "note": "n/a"}
[2026-11-23 10:00:02,000][eval][INFO] - {"epoch": 1, "eval_loss": "2.5", "eval_correct": "2", "eval_accuracy": "30.5", \
"eval_num_updates": "20"}
[2026-11-23 10:00:03,000][train_inner][INFO] - {"epoch": 1, "update": 0.5, "loss": "4", "loss_cls": "3", \
"loss_IMAGE_regression": "1", "target_var": "0.99", "pred_var": "0.45", "ema_decay": "950", "masked_pct": "0.8125", \
"num_updates": "30", "lr_default": "0.001", "lr_0a1b": "0.0005", "lr_ffff": "0.001", "gnorm": "12", \
"layer_stats": [1.0, 2.0], "note": "n/a"}
[2026-11-23 10:00:03,100][train][INFO] - {"epoch": 1, "train_loss": "4.25", "train_num_updates": "30", \
"train_lr_default": "0.001", "train_train_wall": "1"}
[2026-11-23 10:00:04,000][eval][INFO] - {"epoch": 2, "eval_loss": "2.25", "eval_correct": "3", \
"eval_accuracy": "50.25", "eval_num_updates": "40", "eval_best_accuracy": "50.25"}
[2026-11-23 10:00:04,000][eval][INFO] - {"epoch": 2, "eval_loss": "2.25", "eval_correct": "3", \
"eval_accuracy": "50.25", "eval_num_updates": "40", "eval_best_accuracy": "50.25"}
[2026-11-23 10:00:05,000][train_inner][INFO] - {"epoch": 2, "update": 1.5, "loss": "3.5", "loss_cls": "2.5", \
"loss_IMAGE_regression": "1", "target_var": "0.975", "pred_var": "0.4", "ema_decay": "990", "masked_pct": "0.8125", \
"num_updates": "45", "lr_default": "0.00075", "lr_0a1b": "0.000375", "lr_ffff": "0.00075", "gnorm": "9.5", "note": "x"}
[2026-11-23 10:00:05,500][train_inner][INFO] - {"epoch": 1, "loss": "4.5", "num_upd
[2026-11-23 10:00:06,000][train_inner][INFO] - {"epoch": 2, "update": 2.0, "loss": "3.25", "loss_cls": "2.25", \
"loss_IMAGE_regression": "1", "target_var": "0.98", "pred_var": "0.375", "ema_decay": "990", "masked_pct": "0.8125", \
"num_updates": "60", "lr_default": "0.0001", "lr_0a1b": "5e-05", "lr_ffff": "0.0001", "gnorm": "8"}
[2026-11-23 10:00:06,100][train][INFO] - {"epoch": 2, "train_loss": "3.375", "train_num_updates": "60", \
"train_lr_default": "0.0001", "train_train_wall": "2"}
[2026-11-23 10:00:07,000][eval][INFO] - {"epoch": 2, "eval_loss": "2", "eval_correct": "2.5", "eval_accuracy": "45.5", \
"eval_num_updates": "60", "eval_best_accuracy": "50.25"}
[2026-11-23 10:00:07,100][fairseq_cli.train][INFO] - done training in 7.1 seconds
"""

INNER = [15, 30, 45, 60]
EXPECTED = {
    "train_inner": {
        "loss": (INNER, [4.5, 4, 3.5, 3.25]),
        "loss_cls": (INNER, [3.25, 3, 2.5, 2.25]),
        "loss_IMAGE_regression": (INNER, [1.25, 1, 1, 1]),
        "target_var": (INNER, [0.985, 0.99, 0.975, 0.98]),
        "pred_var": (INNER, [0.5, 0.45, 0.4, 0.375]),
        "ema_decay": (INNER, [900, 950, 990, 990]),
        "masked_pct": (INNER, [0.8125] * 4),
        "lr_default": (INNER, [0.0005, 0.001, 0.00075, 0.0001]),
        "lr_0a1b": (INNER, [0.00025, 0.0005, 0.000375, 5e-05]),
        "lr_ffff": (INNER, [0.0005, 0.001, 0.00075, 0.0001]),  # the same curve as lr_default: drawn once
        "gnorm": (INNER, [17.5, 12, 9.5, 8]),
    },
    "train": {
        "loss": ([30, 60], [4.25, 3.375]),
        "lr_default": ([30, 60], [0.001, 0.0001]),
        "train_wall": ([30, 60], [1, 2]),
    },
    "eval": {
        "loss": ([20, 40, 60], [2.5, 2.25, 2]),
        "correct": ([20, 40, 60], [2, 3, 2.5]),
        "accuracy": ([20, 40, 60], [30.5, 50.25, 45.5]),
        "best_accuracy": ([40, 60], [50.25, 50.25]),
    },
}
BEST = (40, 50.25)


def assert_series(log: TrainingLog, expected=EXPECTED):
    assert {s: set(m) for s, m in log.series.items()} == {s: set(m) for s, m in expected.items()}
    for section, metrics in expected.items():
        for metric, (steps, values) in metrics.items():
            got_steps, got_values = log.series[section][metric]
            assert got_steps.dtype == np.int64 and got_steps.tolist() == steps, (section, metric)
            assert got_values.tolist() == [float(v) for v in values], (section, metric)  # exact


@pytest.fixture
def log_file(tmp_path):
    path = tmp_path / "run" / "hydra" / "hydra_train.log"
    path.parent.mkdir(parents=True)
    path.write_text(LOG)
    return path


def test_json_log_is_parsed_into_the_logged_values(log_file):
    log = read_json_log(log_file)
    assert_series(log)  # junk, the config dump, a truncated line, a list and text values are ignored
    assert list(log.series) == ["train_inner", "eval", "train"]  # in order of appearance
    assert (log.valid_subset, log.best_metric, log.maximize, log.best) == ("eval", "accuracy", True, BEST)
    assert read_training_log(log_file.parent.parent).source == log_file  # a run folder: the log below it


def test_best_point_direction_ties_and_errors(log_file):
    log = read_training_log(log_file, best_metric="loss")
    assert (log.best_metric, log.maximize, log.best) == ("loss", False, (60, 2.0))
    assert read_training_log(log_file, best_metric="loss", maximize=True).best == (20, 2.5)
    assert read_training_log(log_file, best_metric="correct").best == (20, 2.0)  # min by name
    # ties: fairseq rewrites checkpoint_best.pt on an equal value (>=), so the last of them is the best
    steps, values = np.array([1, 2, 3, 4]), np.array([0.5, 0.75, np.nan, 0.75])
    tied = TrainingLog.from_series({"valid": {"mAP": (steps, values), "best_mAP": (steps, values)}}, "x")
    assert (tied.best_metric, tied.best) == ("mAP", (4, 0.75))
    with pytest.raises(TrainingLogError, match="metric 'f1' not found"):
        read_training_log(log_file, best_metric="f1")
    assert [maximized_by_name(m) for m in ("accuracy", "acc", "mAP", "AP", "f1", "top1_acc", "loss", "wer", "lr")] \
        == [True] * 6 + [False] * 3


def test_log_file_lines_without_tags_repeated_and_resumed(tmp_path):
    # common.log_file: bare JSON; fairseq adds a file handler per epoch, so lines repeat; a resumed run
    # logs some steps again: the last value of a step is kept
    lines = ['{"epoch": 1, "update": 0.5, "loss": "2", "num_updates": "10"}',
             '{"epoch": 1, "update": 0.5, "loss": "2", "num_updates": "10"}',
             '{"epoch": 1, "valid_loss": "1.5", "valid_mAP": "0.25", "valid_num_updates": "10"}',
             '{"epoch": 1, "valid_loss": "1.5", "valid_mAP": "0.25", "valid_num_updates": "10"}',
             '{"epoch": 2, "update": 1.0, "loss": "1.75", "num_updates": "20"}',
             '{"epoch": 2, "valid_loss": "1.25", "valid_mAP": "0.5", "valid_num_updates": "20", '
              '"valid_best_mAP": "0.5"}',
             '{"epoch": 2, "update": 1.0, "loss": "1.5", "num_updates": "20"}',  # resumed from update 10
             '{"epoch": 2, "update": 1.5, "loss": "1.25", "num_updates": "30"}']
    path = tmp_path / "train.log"
    path.write_text("\n".join(lines) + "\n")
    log = read_training_log(path)
    assert_series(log, {"train_inner": {"loss": ([10, 20, 30], [2, 1.5, 1.25])},
                        "valid": {"loss": ([10, 20], [1.5, 1.25]), "mAP": ([10, 20], [0.25, 0.5]),
                                  "best_mAP": ([20], [0.5])}})
    assert (log.valid_subset, log.best_metric, log.maximize, log.best) == ("valid", "mAP", True, (20, 0.5))


def lines_xy(ax):
    return {line.get_label(): line.get_xydata().tolist() for line in ax.lines}


def xy(section, metric):
    steps, values = EXPECTED[section][metric]
    return [[float(s), float(v)] for s, v in zip(steps, values)]


def test_figures_hold_exactly_the_logged_curves(log_file):
    log = read_json_log(log_file)
    figures, skipped = plots.training_figures(log)
    assert list(figures) == ["losses.png", "lr.png", "pretraining.png", "validation.png"] and skipped == []

    (ax,) = figures["losses.png"].axes
    assert lines_xy(ax) == {m: xy("train_inner", m) for m in ("loss", "loss_cls", "loss_IMAGE_regression")}
    assert [line.get_label() for line in ax.lines][0] == "loss"
    (ax,) = figures["lr.png"].axes
    assert lines_xy(ax) == {m: xy("train_inner", m) for m in ("lr_default", "lr_0a1b")}  # lr_ffff: same curve
    axes = figures["pretraining.png"].axes
    assert [lines_xy(ax) for ax in axes] == [{m: xy("train_inner", m)} for m in plots.PRETRAINING_KEYS]

    accuracy, loss = figures["validation.png"].axes
    assert lines_xy(accuracy) == {"accuracy": xy("eval", "accuracy"), "best accuracy": [list(map(float, BEST))]}
    assert "best accuracy (max) 50.25" in accuracy.texts[0].get_text() and accuracy.texts[0].xy == BEST
    assert lines_xy(loss) == {"loss": xy("eval", "loss")}  # counters (correct) and best_* are not plotted


def test_tensorboard_and_json_written_by_fairseq_agree(tmp_path, monkeypatch):
    """fairseq's progress bar (json format + TensorBoard wrapper) writes the EXPECTED values both ways."""
    logdir, json_log = tmp_path / "tb", tmp_path / "hydra" / "hydra_train.log"
    json_log.parent.mkdir()
    writers = {}
    monkeypatch.setattr(progress_bar, "_tensorboard_writers", writers)  # fairseq caches writers by tag only
    handler = logging.FileHandler(json_log)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))  # hydra's
    logger = logging.getLogger(progress_bar.__name__)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        by_step = {}
        for section, metrics in EXPECTED.items():
            for metric, (steps, values) in metrics.items():
                for step, value in zip(steps, values):
                    by_step.setdefault((step, section), {})[metric] = float(value)
        bar = progress_bar.progress_bar(list(range(len(by_step))), log_format="json", log_interval=1, epoch=1,
                                        tensorboard_logdir=str(logdir))
        for _, ((step, section), stats) in zip(bar, sorted(by_step.items())):
            stats["num_updates"] = step
            if section == "train_inner":
                bar.log(stats, tag=section, step=step)
            else:
                bar.print(stats, tag=section, step=step)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()
        for writer in writers.values():
            writer.close()

    assert sorted(p.name for p in logdir.iterdir()) == ["eval", "train", "train_inner"]
    from_json, from_tb = read_json_log(json_log), read_tensorboard(logdir)
    for log in (from_json, from_tb, read_training_log(tmp_path, source="tensorboard")):
        assert_series(log)
        assert (log.valid_subset, log.best_metric, log.maximize, log.best) == ("eval", "accuracy", True, BEST)
    assert read_training_log(tmp_path).source == json_log  # a folder with both: the JSON log
    assert read_training_log(next((logdir / "eval").iterdir())).source == logdir  # an event file: its log dir


def test_cli_writes_readable_pngs(log_file, tmp_path, capsys):
    from matplotlib.image import imread

    out = tmp_path / "plots"
    assert plot_training.main([str(log_file), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "best eval accuracy (max): 50.25 at update 40" in stdout
    shapes = {"losses.png": (450, 800, 4), "lr.png": (450, 800, 4), "pretraining.png": (700, 1200, 4),
              "validation.png": (700, 800, 4)}  # figure size (inches) x 100 dpi, RGBA
    for name, shape in shapes.items():
        assert f"wrote {out / name}" in stdout
        image = imread(out / name)
        assert image.shape == shape and image.std() > 0

    run = tmp_path / "pretrain"  # no validation: skipped with a note; default --out: the folder given
    (run / "hydra").mkdir(parents=True)
    (run / "hydra" / "hydra_train.log").write_text("\n".join(l for l in LOG.splitlines() if "[eval]" not in l))
    assert plot_training.main([str(run)]) == 0
    stdout = capsys.readouterr().out
    assert "skipped validation.png: no validation section" in stdout
    assert sorted(p.name for p in run.glob("*.png")) == ["losses.png", "lr.png", "pretraining.png"]


def test_cli_errors_name_the_file(tmp_path, capsys):
    junk = tmp_path / "notes.txt"
    junk.write_text("epoch 1 | loss 4.5 | num_updates 10\n{'not': 'json'}\n")
    assert plot_training.main([str(junk)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {junk}: no fairseq JSON log lines") and "common.log_format=json" in err
    assert plot_training.main([str(tmp_path / "missing")]) == 1
    assert f"{tmp_path / 'missing'}: not found" in capsys.readouterr().err
    assert plot_training.main([str(tmp_path), "--source", "tensorboard"]) == 1
    assert "no TensorBoard event files below this folder" in capsys.readouterr().err
    for run in ("a", "b"):
        (tmp_path / run / "hydra_train.log").parent.mkdir()
        (tmp_path / run / "hydra_train.log").write_text(LOG)
    assert plot_training.main([str(tmp_path)]) == 1
    assert "2 hydra_train.log files below this folder" in capsys.readouterr().err


def test_head_curves_put_training_and_validation_in_one_panel():
    """Note 003 section 5: a head's CE on the training batches and on the validation subset, overlaid."""
    train_steps, valid_steps = np.array([1, 2, 3, 4]), np.array([2, 4])
    series = {"train_inner": {"loss": (train_steps, np.array([4.0, 3, 2, 1])),
                              "machine_id_ce": (train_steps, np.array([1.9, 1.2, 0.6, 0.3]))},
              "valid": {"loss": (valid_steps, np.array([3.0, 2.5])),
                        "machine_id_ce": (valid_steps, np.array([1.6, 4.0])),  # overfitting: valid rises
                        "best_loss": (valid_steps, np.array([3.0, 2.5]))}}
    log = TrainingLog.from_series(series, "x")
    figure = plots.training_figures(log)[0]["heads_train_valid.png"]
    (ax,) = figure.axes
    assert lines_xy(ax) == {"train_inner machine_id_ce": [[1.0, 1.9], [2.0, 1.2], [3.0, 0.6], [4.0, 0.3]],
                            "valid machine_id_ce": [[2.0, 1.6], [4.0, 4.0]]}
    del series["valid"]["machine_id_ce"]  # logged on one side only: no such figure, and no skip note
    figures, skipped = plots.training_figures(TrainingLog.from_series(series, "x"))
    assert "heads_train_valid.png" not in figures and not any("heads" in s for s in skipped)
