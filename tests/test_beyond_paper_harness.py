"""benchmarks/beyond_paper.py: run specs, reuse, threads, per-group AP, tables, the real-photo
split and the cost helpers on small inputs; one tiny end-to-end run (slow)."""

import json
import os

import pytest
from PIL import Image

from benchmarks import (
    beyond_paper,
    beyond_paper_cost,
    beyond_paper_data,
    beyond_paper_lib,
)
from scdnn_tf.data import label_map, shapes


def _result(variant, seed, per_class, m_ap, set_name="val"):
    return {"variant": variant, "seed": seed,
            "eval": {set_name: {"mAP": m_ap, "per_class_AP": per_class}}}


def test_importing_the_cli_defines_no_flags_so_it_shares_a_process_with_other_benchmarks():
    from absl import flags  # noqa: PLC0415

    from benchmarks import light_accuracy  # noqa: F401, PLC0415 (defines `seeds` on import)
    assert "experiments" not in flags.FLAGS


def test_group_ap_means_each_group_and_leaves_out_classes_without_positives():
    per_class = {"sun": 0.9, "ball": 0.5, "tree": None, "house": 0.6}
    groups = {"pair": ["sun", "ball"], "rest": ["tree", "house"], "empty": ["tree"]}
    assert beyond_paper_lib.group_ap(per_class, groups) == pytest.approx(
        {"pair": 0.7, "rest": 0.6, "empty": None})
    with pytest.raises(KeyError, match="'cat'"):
        beyond_paper_lib.group_ap(per_class, {"g": ["sun", "cat"]})


def test_summary_and_table_mean_over_seeds_with_per_seed_values_and_deltas():
    groups = {"pair": ["a", "b"], "other": ["c"]}
    results = [_result("none", 0, {"a": 0.5, "b": 0.7, "c": 0.9}, 0.70),
               _result("attention", 0, {"a": 0.8, "b": 0.8, "c": 0.9}, 0.80),
               _result("none", 1, {"a": 0.4, "b": 0.6, "c": 0.8}, 0.60),
               _result("attention", 1, {"a": 0.9, "b": 0.9, "c": 0.8}, 0.85)]
    summary = beyond_paper_lib.summarize(results, groups, "val")
    assert summary["none"]["pair"]["mean"] == pytest.approx(0.55)
    assert summary["attention"]["pair"]["seeds"] == pytest.approx({"0": 0.8, "1": 0.9})
    table = beyond_paper_lib.markdown_table(summary, ["mAP", "pair", "other"],
                                            [("attention", "none")])
    lines = table.splitlines()
    assert lines[0] == "| variant | mAP | pair | other |"
    assert lines[2] == "| none | 65.0 (70.0, 60.0) | 55.0 (60.0, 50.0) | 85.0 (90.0, 80.0) |"
    assert lines[4] == "| attention - none | +17.5 | +30.0 | +0.0 |"


def test_delta_against_the_best_of_several_variants_takes_the_best_per_column():
    results = [_result("s1", 0, {"near": 0.9, "far": 0.3}, 0.6),
               _result("s4", 0, {"near": 0.4, "far": 0.8}, 0.6),
               _result("multi", 0, {"near": 0.85, "far": 0.9}, 0.875)]
    summary = beyond_paper_lib.summarize(results, {"near": ["near"], "far": ["far"]}, "val")
    deltas = beyond_paper._deltas([("multi", ("s1", "s4")), ("multi", ("s1", "absent"))],
                                  summary)
    assert deltas == [("multi", ("s1", "s4"))]  # a pair with a variant that did not run: out
    table = beyond_paper_lib.markdown_table(summary, ["near", "far"], deltas)
    assert table.splitlines()[-1] == "| multi - best of (s1, s4) | -5.0 | +10.0 |"


def test_table_shows_missing_values_as_na():
    summary = beyond_paper_lib.summarize([_result("x", 0, {"a": None}, 0.5)], {"g": ["a"]}, "val")
    table = beyond_paper_lib.markdown_table(summary, ["mAP", "g", "absent"])
    assert table.splitlines()[2] == "| x | 50.0 (50.0) | n/a (n/a) | n/a |"


def test_make_runs_is_seed_major_and_drops_a_warmup_that_does_not_fit():
    runs = beyond_paper_lib.make_runs("tiles", {"paper": (), "relation": ("--relation=attention",)},
                                      [0, 1], ("--train_pattern=x",), [("val", "v")], 800, 50)
    assert [r.name for r in runs] == ["paper_seed0", "relation_seed0", "paper_seed1",
                                      "relation_seed1"]
    assert runs[1].flags == ("--train_pattern=x", "--relation=attention")
    assert runs[0].warmup_steps == 50
    short = beyond_paper_lib.make_runs("tiles", {"paper": ()}, [0], (), [], 20, 50)
    assert short[0].warmup_steps == 0
    cmd = beyond_paper_lib.train_command(runs[1], "/m")
    # The option comes after the flagfile: it overrides the recipe.
    flagfile = f"--flagfile={beyond_paper_lib.DEMO_FLAGS}"
    assert cmd.index("--relation=attention") > cmd.index(flagfile)
    assert {"--model_dir=/m", "--seed=0", "--train_steps=800", "--eval_every=800"} <= set(cmd)


def test_thread_env_splits_the_cores_between_parallel_runs_only():
    base = {"PATH": "/bin"}
    assert beyond_paper_lib.thread_env(1, cpus=2, base=base) == base
    env = beyond_paper_lib.thread_env(2, cpus=2, base=base)
    assert env["OMP_NUM_THREADS"] == env["TF_NUM_INTRAOP_THREADS"] == "1"
    assert env["TF_NUM_INTEROP_THREADS"] == "1" and env["PATH"] == "/bin"
    assert beyond_paper_lib.thread_env(2, cpus=8, base=base)["TF_NUM_INTRAOP_THREADS"] == "4"


def test_finished_run_is_reused_only_with_the_same_command(tmp_path):
    run = beyond_paper_lib.make_runs("tiles", {"paper": ()}, [0], (), [], 10, 0)[0]
    model_dir = str(tmp_path / "tiles" / run.name)
    command = beyond_paper_lib.train_command(run, model_dir)
    path = beyond_paper_lib.result_path(str(tmp_path), run)
    assert beyond_paper_lib.load_finished(path, command) is None
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump({"train_command": command[1:], "metrics": {"mAP": 0.5}}, f)
    # execute() returns the stored result without starting a process.
    assert beyond_paper_lib.execute(run, str(tmp_path), {})["metrics"] == {"mAP": 0.5}
    other = beyond_paper_lib.make_runs("tiles", {"paper": ()}, [0], (), [], 20, 0)[0]
    with pytest.raises(ValueError, match="other flags"):
        beyond_paper_lib.execute(other, str(tmp_path), {})


def test_failed_run_is_reported_and_the_others_still_finish(tmp_path):
    runs = beyond_paper_lib.make_runs("tiles", {"bad": ("--no_such_flag=1",)}, [0], (), [], 5, 0)
    messages = []
    results, failures = beyond_paper_lib.execute_all(runs, str(tmp_path), 1, messages.append)
    assert results == [] and failures[0][0] == "tiles bad_seed0"
    assert "no_such_flag" in failures[0][1] and "FAILED" in messages[0]


def test_layout_groups_prefer_the_generator_and_fall_back_to_the_label_map(monkeypatch):
    names = ["sun", "ball", "tree", "lamp"]
    assert beyond_paper_data.fallback_groups(names) == {
        "new in layout": ["lamp"], "context-decided (tiles)": ["sun", "ball"], "other": ["tree"]}
    monkeypatch.delattr(shapes, "LAYOUT_GROUPS", raising=False)
    assert beyond_paper_data.layout_groups("relations", names)["new in layout"] == ["lamp"]
    monkeypatch.setattr(shapes, "LAYOUT_GROUPS", {"relations": {"decided": ["sun", "lamp"]}},
                        raising=False)
    assert beyond_paper_data.layout_groups("relations", names) == {"decided": ["sun", "lamp"]}
    monkeypatch.setattr(shapes, "LAYOUT_GROUPS", {"relations": {"decided": ["moon"]}},
                        raising=False)
    with pytest.raises(ValueError, match="moon"):
        beyond_paper_data.layout_groups("relations", names)


def test_unknown_layout_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no_such_layout.*LAYOUTS"):
        beyond_paper_data.shapes_data(str(tmp_path), "no_such_layout", 2, 2)


CATEGORIES = [{"id": i + 1 + (i >= 11), "name": f"class{i}"} for i in range(80)]  # ids skip 12


def _coco(root, name, ids, categories=CATEGORIES):
    os.makedirs(os.path.join(root, name, "train2017"))
    os.makedirs(os.path.join(root, name, "annotations"))
    images, anns = [], []
    for i in ids:
        Image.new("RGB", (16, 12), (i % 250, 0, 0)).save(
            os.path.join(root, name, "train2017", f"{i:012d}.jpg"))
        images.append({"id": i, "file_name": f"{i:012d}.jpg", "height": 12, "width": 16})
        # Last category (COCO id 81 here): index 79 in the 80-class order.
        anns.append({"id": 100 * i, "image_id": i, "bbox": [1, 1, 8, 6],
                     "category_id": categories[-1]["id"], "iscrowd": 0, "area": 48})
    with open(os.path.join(root, name, "annotations", "instances_train2017.json"), "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": categories}, f)


def _yolo(root, ids):
    for sub in ("images", "labels"):
        os.makedirs(os.path.join(root, "coco128", sub, "train2017"))
    for i in ids:
        Image.new("RGB", (16, 12)).save(os.path.join(root, "coco128", "images", "train2017",
                                                     f"{i:012d}.jpg"))
        with open(os.path.join(root, "coco128", "labels", "train2017", f"{i:012d}.txt"), "w") as f:
            f.write("79 0.5 0.5 0.5 0.5\n")


def _records(pattern):
    import tensorflow as tf  # noqa: PLC0415

    from scdnn_tf.data.records import parse_example  # noqa: PLC0415
    files = sorted(tf.io.gfile.glob(pattern))
    return [parse_example(r) for r in tf.data.TFRecordDataset(files)]


def test_real_split_by_collection_dedups_eval_and_shares_the_80_class_map(tmp_path):
    data = str(tmp_path / "coco_real")
    _coco(data, "coco_mini", [1, 2])
    _yolo(data, [3, 4])
    _coco(data, "coco_tiny", [5, 6, 2])  # 2 is a training photo: left out of eval
    _coco(data, "tiny_coco", [6, 7])  # 6 is in both eval collections: kept once
    split = beyond_paper_data.real_split(data, str(tmp_path / "out"))
    assert split["images"] == {"train": 4, "eval": 3}
    assert split["excluded_from_eval"] == [2, 6]
    names = label_map.read_label_map(split["label_map"])
    assert names == [c["name"] for c in CATEGORIES]
    eval_records = _records(split["eval_pattern"])
    assert sorted(r["source_id"].numpy().decode() for r in eval_records) == ["5", "6", "7"]
    train_records = _records(split["train_pattern"])
    assert len(train_records) == 4
    # COCO json and YOLO records agree on the index of the same class (79).
    assert all(r["classes"].numpy().tolist() == [79] for r in train_records + eval_records)
    # Done once: a second call reads the stored split.
    assert beyond_paper_data.real_split(data, str(tmp_path / "out")) == split


def test_real_split_refuses_a_json_without_the_80_classes_and_a_missing_folder(tmp_path):
    data = str(tmp_path / "coco_real")
    for name in ("coco_mini", "coco_tiny", "tiny_coco"):
        _coco(data, name, [1], categories=CATEGORIES[:79] if name == "coco_tiny" else CATEGORIES)
    with pytest.raises(ValueError, match="coco_tiny.*79 categories"):
        beyond_paper_data.real_split(data, str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="real_data_dir"):
        beyond_paper_data.real_split(str(tmp_path / "absent"), str(tmp_path / "out"))


def test_missing_real_photos_skip_the_experiment_with_the_reason(tmp_path):
    settings = beyond_paper.Settings(seeds=[0], train_steps=2, real_train_steps=2,
                                     out_dir=str(tmp_path), real_data_dir=str(tmp_path / "no"))
    out = beyond_paper.run_experiments(["real"], settings, str(tmp_path / "r.json"),
                                       report=lambda *_: None)
    assert "not found" in out["real"]["skipped"]
    with pytest.raises(ValueError, match="unknown.*bogus"):
        beyond_paper.run_experiments(["bogus"], settings, str(tmp_path / "r.json"))


def test_cost_config_reads_the_demo_flagfile_and_names_an_unknown_option():
    config = beyond_paper_cost.config_from_args(beyond_paper_cost.SIZES["demo"][0])
    assert (config.backbone, config.image_size, config.global_batch_size) == ("small", 128, 16)
    r50 = beyond_paper_cost.config_from_args(beyond_paper_cost.SIZES["resnet50@448x2"][0])
    assert (r50.backbone, r50.image_size, r50.global_batch_size, r50.fpn_channels) == (
        "resnet50", 448, 2, 256)
    with pytest.raises(ValueError, match="no_such_option"):
        beyond_paper_cost.config_from_args(["--no_such_option"])


def test_cost_rounds_rotate_and_ratios_are_per_round_medians():
    assert [beyond_paper_cost.rotated(["a", "b", "c"], i) for i in range(4)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    timings = {"paper": [1.0, 2.0, 1.0], "x": [1.5, 2.0, 1.2]}
    assert beyond_paper_cost.ratio_summary(timings, "paper") == pytest.approx(
        {"paper": 1.0, "x": 1.2})


def test_failure_line_names_the_error_not_the_last_line():
    log = "I step 1\nFATAL Flags parsing error: Unknown command line flag 'x'\nPass --helpshort\n"
    assert beyond_paper_lib.failure_line(log) == ("FATAL Flags parsing error: Unknown command "
                                                  "line flag 'x'")
    assert beyond_paper_lib.failure_line("a\nKilled\n\n") == "Killed"


@pytest.mark.slow  # builds and traces two models (~45 s on 2 loaded cores)
def test_cost_measures_each_buildable_option_against_the_paper_model(monkeypatch):
    tiny = ("--backbone=small", "--image_size=64", "--fpn_channels=16", "--fc_units=32",
            "--num_patches=4", "--num_train_patches=4", "--anchor_sizes=8,16,32,64",
            "--global_batch_size=2")
    monkeypatch.setitem(beyond_paper_cost.SIZES, "tiny", (tiny, 3))
    messages = []
    out = beyond_paper_cost.measure_size(
        "tiny", {"paper": (), "wider": ("--fc_units=64",), "missing": ("--no_such_option",)},
        rounds=2, steps=1, report=messages.append)
    paper, wider = out["options"]["paper"], out["options"]["wider"]
    assert paper["params_ratio"] == 1.0 and paper["step_ratio"] == 1.0
    assert wider["params"] > paper["params"] and wider["params_ratio"] > 1.0
    assert wider["step_s"] > 0 and len(out["load_avg"]) == 2
    assert "no_such_option" in out["unavailable"]["missing"] and "not available" in messages[0]
    table = beyond_paper_cost.cost_table({"tiny": out})
    assert f"| tiny | wider | {wider['params']:,} |" in table
    assert "| tiny | missing | not available" in table


@pytest.mark.slow
def test_tiles_experiment_end_to_end_with_the_paper_config(tmp_path):
    settings = beyond_paper.Settings(seeds=[0], train_steps=2, real_train_steps=2,
                                     out_dir=str(tmp_path), shapes_train=16, shapes_val=8,
                                     variants=("paper",))
    out = beyond_paper.run_experiments(["tiles"], settings, str(tmp_path / "r.json"),
                                       report=lambda *_: None)
    entry = out["tiles"]
    assert entry["failures"] == []
    run = entry["runs"][0]
    assert sorted(run["eval"]["val"]["per_class_AP"]) == sorted(shapes.CLASSES)
    assert entry["table"].splitlines()[2].startswith("| paper | ")
    with open(tmp_path / "r.json") as f:
        assert json.load(f)["tiles"]["summary"]["paper"]["mAP"]["seeds"].keys() == {"0"}
