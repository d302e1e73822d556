"""benchmarks/pretrained.py: the probe's pieces (records to arrays, size groups, per-class
logistic regressions, metrics by name), the summary and the recipe plumbing."""

import os

import numpy as np
import pytest

from benchmarks import beyond_paper_lib, pretrained, pretrained_lib
from helpers import CLASSES, write_tiny_dataset


def test_records_arrays_reads_every_record_with_its_labels_and_box_areas(tmp_path):
    data = write_tiny_dataset(tmp_path / "d", num_train=10, num_val=3, size=64)
    images, labels, weights, areas = pretrained_lib.records_arrays(
        f"{data}/train-*", len(CLASSES), 64, batch_size=4)
    assert images.shape == (10, 64, 64, 3) and images.dtype == np.uint8
    assert labels.shape == weights.shape == (10, len(CLASSES))
    # Every labelled class has one area per box, each a square of 1/4..1/2 the side.
    assert sum(len(a) for a in areas.values()) == int(labels.sum())
    assert all(1 / 16 - 1e-6 <= a <= 1 / 4 + 1e-6 for v in areas.values() for a in v)


def test_size_groups_split_classes_by_their_median_box_area():
    names = ["a", "b", "c", "d"]
    areas = {0: [0.001, 0.002, 0.5], 1: [0.02, 0.03], 2: [0.009, 0.011, 0.0095]}
    groups = pretrained_lib.size_groups(areas, names, threshold=0.01)
    small, rest = groups.values()
    assert small == ["a", "c"] and rest == ["b"]  # d has no box: in neither


def test_linear_probe_ranks_separable_classes_perfectly_and_survives_one_sided_classes():
    rng = np.random.default_rng(0)
    labels = (rng.random([60, 3]) < 0.5).astype(np.float32)
    labels[:, 2] = 0  # a class no training photo has
    features = rng.normal(size=[60, 8]).astype(np.float32)
    features[:, :2] += 4 * labels[:, :2]  # class k shifts feature k
    scores = pretrained_lib.linear_probe_scores(features[:40], labels[:40], features[40:])
    metrics = pretrained_lib.probe_metrics(scores, labels[40:], np.ones_like(labels[40:]),
                                           ["x", "y", "z"])
    assert metrics["per_class_AP"]["x"] == pytest.approx(1.0)
    assert metrics["per_class_AP"]["y"] == pytest.approx(1.0)
    assert metrics["per_class_AP"]["z"] is None  # no positive among the held-out photos
    assert np.all(scores[:, 2] == scores[0, 2])


def test_summary_has_held_out_groups_and_fit_per_variant():
    def result(variant, seed, held, fit):
        return {"variant": variant, "seed": seed,
                "eval": {"held_out": {"mAP": held, "per_class_AP": {"a": held, "b": None}},
                         "train": {"mAP": fit, "per_class_AP": {}}}}
    summary = pretrained.summarize([result("scdnn", 0, 0.4, 0.9), result("scdnn", 1, 0.6, 0.8)],
                                   {"small": ["a"], "rest": ["b"]})
    cells = summary["scdnn"]
    assert list(cells) == ["held-out mAP", "small", "rest", "train mAP (fit)"]
    assert cells["held-out mAP"]["mean"] == pytest.approx(0.5)
    assert cells["rest"]["mean"] is None
    assert cells["train mAP (fit)"]["seeds"] == pytest.approx({"0": 0.9, "1": 0.8})


def test_runs_train_on_the_recipe_flagfile_with_overrides_after_it():
    run, = beyond_paper_lib.make_runs("x", {"v": ("--learning_rate=0.003",)}, [1], ("--a=1",),
                                      [], 150, 15, flagfile=pretrained.RECIPE)
    command = beyond_paper_lib.train_command(run, "/m")
    assert command[3] == f"--flagfile={pretrained.RECIPE}" and os.path.isfile(pretrained.RECIPE)
    assert command.index("--learning_rate=0.003") > 3 and "--train_steps=150" in command
    default, = beyond_paper_lib.make_runs("x", {"v": ()}, [0], (), [], 10, 0)
    assert beyond_paper_lib.train_command(default, "/m")[3] == (
        f"--flagfile={beyond_paper_lib.DEMO_FLAGS}")


def test_recipe_grid_keeps_each_models_learning_rate_and_crosses_loss_with_augmentation():
    grid = pretrained.recipe_variants()
    assert len(grid) == 2 * 4
    for model, base in pretrained.RECIPE_BASE.items():
        cells = {v: f for v, f in grid.items() if v.startswith(model + " ")}
        assert len(cells) == 4 and all(f[:len(base)] == base for f in cells.values())
        asl = [v for v, f in cells.items() if "--label_loss=asl" in f]
        augmented = [v for v, f in cells.items() if "--cutout=0.5" in f and
                     "--randaugment=2,9" in f]
        assert len(asl) == 2 and len(augmented) == 2 and len(set(asl) & set(augmented)) == 1


def test_best_cells_pick_each_models_highest_mean_and_ignore_onecycle_and_unscored_rows():
    def row(held):
        return {"held-out mAP": {"mean": held, "seeds": {}}}
    summary = {"scdnn bce": row(0.3), "scdnn asl": row(0.35), "scdnn asl onecycle": row(0.9),
               "baseline bce": row(None), "baseline asl +RA+cutout": row(0.2),
               "probe (frozen, linear)": row(0.99)}
    assert pretrained.best_cells(summary) == {"scdnn": "scdnn asl",
                                              "baseline": "baseline asl +RA+cutout"}


def test_onecycle_runs_add_the_schedule_to_the_best_cell_without_a_warm_up():
    grid = pretrained.recipe_variants()

    def make(variants):
        return beyond_paper_lib.make_runs("x", variants, [0, 1], (), [], 100, 10,
                                          flagfile=pretrained.RECIPE)
    runs = pretrained.onecycle_runs({"scdnn": "scdnn asl"}, grid, make)
    assert [(r.variant, r.seed) for r in runs] == [("scdnn asl onecycle", 0),
                                                   ("scdnn asl onecycle", 1)]
    command = beyond_paper_lib.train_command(runs[0], "/m")
    assert "--lr_schedule=onecycle" in command and "--label_loss=asl" in command
    assert "--warmup_steps=0" in command  # the config refuses a warm-up with one-cycle


def test_every_run_of_both_tables_is_a_valid_training_config(tmp_path, monkeypatch):
    """The flagfile ships one-cycle: the tables' cosine runs (with a warm-up) and one-cycle
    runs (without) must both still parse and validate on top of it."""
    from absl import flags

    from scdnn_tf.core.config import TrainConfig, config_from_flags, define_flags
    monkeypatch.chdir(tmp_path)
    for name in ("train-0.tfrecord", "eval-0.tfrecord", "labels.txt", "w.weights.h5"):
        (tmp_path / name).write_text("")
    split = {"train_pattern": str(tmp_path / "train-*"), "eval_pattern": str(tmp_path / "eval-*"),
             "label_map": str(tmp_path / "labels.txt")}
    settings = {"weights": str(tmp_path / "w.weights.h5"), "image_size": 224,
                "train_steps": 100, "seeds": [0]}
    make = pretrained._run_maker(settings, split)
    grid = pretrained.recipe_variants()
    runs = make(pretrained.VARIANTS) + make(grid) + pretrained.onecycle_runs(
        {"scdnn": "scdnn bce", "baseline": "baseline asl"}, grid, make)
    schedules = set()
    for run in runs:
        values = flags.FlagValues()
        define_flags(values)
        command = beyond_paper_lib.train_command(run, str(tmp_path / "m"))[3:]
        values(["prog", *(f for f in command if f != "--logtostderr")])  # absl's own flag
        config = TrainConfig(**config_from_flags(values)).validate()
        schedules.add((config.lr_schedule, config.warmup_steps))
        assert config.train_steps == 100 and config.backbone_weights == settings["weights"]
    assert schedules == {("cosine", 10), ("onecycle", 0)}
