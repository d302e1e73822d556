"""Data errors raised inside the tf.data graph become one line naming the record, its
shard and the problem; the first records of each shard are checked before anything runs."""

import numpy as np
import pytest
import tensorflow as tf

from scdnn_tf.data import records
from scdnn_tf.data.input_errors import InputDataError, input_error_message, input_errors
from scdnn_tf.data.pipeline import make_dataset
from scdnn_tf.data.record_checks import check_first_records

PNG = tf.io.encode_png(np.full((8, 8, 3), 128, np.uint8)).numpy()


def _example(i, classes=(0,), texts=None, encoded=PNG):
    return records.build_example(
        encoded=encoded, image_format="png", height=8, width=8, filename=f"img{i}.png",
        source_id=str(100 + i), boxes=[[0.1, 0.1, 0.6, 0.6]] * len(classes),
        classes=list(classes), class_texts=texts or ["a"] * len(classes)).SerializeToString()


def _write(path, serialized):
    with tf.io.TFRecordWriter(str(path)) as w:
        for s in serialized:
            w.write(s)
    return str(path)


def _uneven(i):
    ex = tf.train.Example.FromString(_example(i))
    ex.features.feature[records.XMIN].float_list.value.append(0.2)
    return ex.SerializeToString()


def _read_all(ds, source=""):
    with input_errors(source):
        for _ in ds:
            pass


def _one_line(message):
    assert "\n" not in message and "[[" not in message and "{{" not in message, message


@pytest.mark.parametrize("bad, problem", [
    (lambda i: _example(i, classes=(0, 12)), r"class index outside 0\.\.9 \(num_classes=10\): 12"),
    (lambda i: _example(i, texts=["umbrella"]),
     "class names stored in record img5.png .*differ from the label map: class indices 0 "
     "stored as umbrella but the label map names them a"),
    (_uneven, r"per-object lists of record img5.png .* disagree in length .*: 1 2 1 1 1"),
    (lambda i: _example(i, encoded=b""), "not a JPEG/PNG/GIF/BMP/WebP image record img5.png"),
])
def test_record_failing_a_check_in_the_pipeline_is_one_line(tmp_path, bad, problem):
    names = ["a"] + [f"c{k}" for k in range(1, 10)]
    shard = _write(tmp_path / "train-00000-of-00001.tfrecord",
                   [_example(i) for i in range(5)] + [bad(5)])
    for training in (False, True):  # past the start check (4 records per shard)
        ds = make_dataset(shard, 10, 16, 2, training=training, class_names=names, seed=1,
                          repeat=False)
        with pytest.raises(InputDataError, match=problem) as e:
            _read_all(ds)
        message = str(e.value)
        _one_line(message)
        assert f"(source_id 105) at index 5 of shard {shard}" in message


def test_the_same_records_fail_at_the_start_naming_shard_and_record(tmp_path):
    shard = _write(tmp_path / "s.tfrecord", [_example(0), _example(1, classes=(3, 12))])
    with pytest.raises(ValueError, match=r"class index outside 0\.\.9 \(num_classes=10\): \[12\] "
                                         rf"in record img1.png \(source_id 101\) at index 1 of "
                                         rf"shard {shard}"):
        make_dataset(shard, 10, 16, 1, training=False)
    other = _write(tmp_path / "t.tfrecord", [_example(0, classes=(2,), texts=["dog"])])
    with pytest.raises(ValueError, match="class 2 stored as 'dog' but the label map names it 'c'"):
        check_first_records([other], 3, class_names=["a", "b", "c"])
    uneven = _write(tmp_path / "u.tfrecord", [_uneven(0)])
    with pytest.raises(ValueError, match=r"disagree in length .*\[1, 2, 1, 1, 1\]"):
        check_first_records([uneven], 3)
    garbage = _write(tmp_path / "g.tfrecord", [b"\xff\xfe not a proto"])
    with pytest.raises(ValueError, match=f"record at index 0 of shard {garbage} is not a "
                                         "tf.train.Example"):
        check_first_records([garbage], 3)
    assert check_first_records([shard, other], 20, per_shard=1) == 2


@pytest.mark.parametrize("garbage, detail", [
    (b"not a proto", "Could not parse example input"),
    (b"\xff\xfe not a proto", "Could not parse example input"),
])
def test_unreadable_record_without_a_check_still_one_line(tmp_path, garbage, detail):
    shard = _write(tmp_path / "g.tfrecord", [_example(0), garbage])
    ds = make_dataset(shard, 10, 16, 1, training=False, check_first=0)
    with pytest.raises(InputDataError, match="a record of --eval_pattern=x cannot be read: .*"
                                             + detail) as e:
        _read_all(ds, "--eval_pattern=x")
    _one_line(str(e.value))


def test_error_inside_a_step_function_is_rewritten_too(tmp_path):
    shard = _write(tmp_path / "s.tfrecord", [_example(i) for i in range(4)]
                   + [_example(4, classes=(7,))])
    ds = make_dataset(shard, 5, 16, 1, training=True, seed=0)

    @tf.function
    def step(iterator):
        return tf.reduce_sum(next(iterator)["labels"])

    iterator = iter(ds)
    with pytest.raises(InputDataError, match=r"outside 0\.\.4 \(num_classes=5\): 7 in record "
                                             "img4.png") as e:
        with input_errors():
            for _ in range(20):
                step(iterator)
    _one_line(str(e.value))


def test_errors_not_from_the_input_pass_through():
    with pytest.raises(tf.errors.InvalidArgumentError):
        with input_errors():
            tf.debugging.assert_equal(1, 2, message="model bug")
    try:
        tf.reshape(tf.zeros([3]), [2])
    except tf.errors.InvalidArgumentError as e:
        assert input_error_message(e) is None
    assert input_error_message(ValueError("x")) is None
    with pytest.raises(UnicodeDecodeError):
        with input_errors():
            b"\xff".decode("utf-8")


def test_inspect_names_the_unreadable_record(tmp_path):
    from data_tools.inspect_tfrecord import iter_examples

    shard = _write(tmp_path / "g.tfrecord", [_example(0), b"\xff\xfe not a proto", _uneven(2)])
    with pytest.raises(ValueError, match=f"record at index 1 of shard {shard} cannot be read: "
                                         "not a tf.train.Example"):
        list(iter_examples(shard))
    shard = _write(tmp_path / "u.tfrecord", [_uneven(0)])
    with pytest.raises(ValueError, match="record at index 0 of shard .* per-object lists of "
                                         "record img0.png .* disagree in length"):
        list(iter_examples(shard))
