"""TF Serving REST JSON and PredictRequest protos, answered through an exported SavedModel."""

import base64
import io
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from scdnn_tf.serving.exporter import export_saved_model
from scdnn_tf.modeling.scdnn import SCDNN
from serving_client import (handle_predict_request, handle_rest_request,
                                       outputs_to_rest_response, rest_request_to_inputs)

NAMES = ["person", "car", "dog"]
BYTES_SPEC = {"image_bytes": tf.TensorSpec([None], tf.string)}


def png(seed, h=40, w=30):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)).save(
        buf, format="PNG")
    return buf.getvalue()


def b64(data):
    return {"b64": base64.b64encode(data).decode("ascii")}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    model = SCDNN(len(NAMES), backbone="small", image_size=64, fpn_channels=16, fc_units=32,
                  anchor_sizes=(8, 16, 32, 64), num_patches=6)
    model(tf.zeros([1, 64, 64, 3]))
    path = export_saved_model(model, NAMES, str(tmp_path_factory.mktemp("export")), top_k=2)
    return tf.saved_model.load(path)


def test_rest_forms_parse_to_the_same_inputs():
    a, b = png(1), png(2)
    row, is_row = rest_request_to_inputs(json.dumps({"instances": [b64(a), b64(b)]}), BYTES_SPEC)
    assert is_row and row["image_bytes"].tolist() == [a, b]
    named, _ = rest_request_to_inputs({"instances": [{"image_bytes": b64(a)}]}, BYTES_SPEC)
    assert named["image_bytes"].tolist() == [a]
    columnar, is_row = rest_request_to_inputs({"inputs": {"image_bytes": [b64(b)]}}, BYTES_SPEC)
    assert not is_row and columnar["image_bytes"].tolist() == [b]
    bare, _ = rest_request_to_inputs({"inputs": [b64(b)]}, BYTES_SPEC)
    assert bare["image_bytes"].tolist() == [b]


@pytest.mark.parametrize("body, message", [
    ({"instances": [], "inputs": []}, "exactly one of"),
    ({"instances": []}, "non-empty"),
    ({"instances": [{"b64": "not base64!"}]}, "invalid base64"),
    ({"instances": [{"url": "x"}]}, "must be"),
    ({"inputs": {"images": [1]}}, "keys"),
])
def test_malformed_rest_bodies_are_named(body, message):
    with pytest.raises(ValueError, match=message):
        rest_request_to_inputs(body, BYTES_SPEC)


def test_rest_response_forms():
    outputs = {"scores": np.array([[0.5, 0.25]], np.float32),
               "top_class_names": np.array([[b"car", b"dog"]], object),
               "raw_bytes": np.array([b"\xff\x00"], object)}
    row = outputs_to_rest_response(outputs, row_format=True)
    assert row == {"predictions": [{"scores": [0.5, 0.25], "top_class_names": ["car", "dog"],
                                    "raw_bytes": {"b64": "/wA="}}]}
    col = outputs_to_rest_response({"scores": outputs["scores"]}, row_format=False)
    assert col == {"outputs": {"scores": [[0.5, 0.25]]}}
    single = outputs_to_rest_response({"scores": outputs["scores"]}, row_format=True)
    assert single == {"predictions": [[0.5, 0.25]]}


def test_rest_request_answered_by_the_saved_model(loaded):
    images = [png(3), png(4, 64, 20)]
    direct = loaded.signatures["serving_default"](image_bytes=tf.constant(images))
    body = json.dumps({"instances": [b64(x) for x in images]})
    response = json.loads(json.dumps(handle_rest_request(loaded, body)))  # JSON-serializable
    predictions = response["predictions"]
    assert len(predictions) == 2
    np.testing.assert_allclose([p["scores"] for p in predictions], direct["scores"], atol=1e-6)
    assert [p["top_class_names"] for p in predictions] == \
        direct["top_class_names"].numpy().astype(str).tolist()
    assert len(predictions[0]["patch_boxes"]) == 6
    # Columnar request to another signature: a uint8 image tensor as nested lists.
    pixels = np.asarray(Image.open(io.BytesIO(images[0])))
    col = handle_rest_request(loaded, {"signature_name": "image_tensor",
                                       "inputs": {"images": [pixels.tolist()]}})
    np.testing.assert_allclose(col["outputs"]["scores"], direct["scores"][:1], atol=1e-5)


def test_rest_errors_come_back_as_error_bodies(loaded):
    response = handle_rest_request(loaded, {"instances": [b64(png(5)), b64(b"plain text")]})
    assert "not a JPEG/PNG" in response["error"] and "input 1" in response["error"]
    assert "not found" in handle_rest_request(loaded, {"signature_name": "nope",
                                                       "instances": [b64(png(5))]})["error"]
    assert "cannot convert" in handle_rest_request(
        loaded, {"signature_name": "image_tensor", "inputs": [[[[300, 0, 0]]]]})["error"]
    rgba = handle_rest_request(loaded, {"signature_name": "image_tensor",
                                        "inputs": [[[[0, 0, 0, 255]] * 2] * 2]})["error"]
    assert "expected uint8 [N, H, W, 3] (RGB), got shape] [1 2 2 4]" in rgba
    short = handle_rest_request(loaded, {"instances": [b64(png(5)), b64(b"abc")]})["error"]
    assert "[input 1] [is not a JPEG/PNG/GIF/BMP/WebP image: length] [3]" in short


def test_predict_request_proto_answered_by_the_saved_model(loaded):
    predict_pb2 = pytest.importorskip("tensorflow_serving.apis.predict_pb2")
    images = [png(6), png(7)]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "scdnn"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    request.output_filter.extend(["scores", "top_class_names", "labels"])
    response = handle_predict_request(loaded, request, version=1)
    direct = loaded.signatures["serving_default"](image_bytes=tf.constant(images))
    assert sorted(response.outputs) == ["labels", "scores", "top_class_names"]
    assert response.model_spec.signature_name == "serving_default"
    assert response.model_spec.version.value == 1
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["scores"]), direct["scores"],
                               atol=1e-6)
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["labels"]), direct["labels"])
    names = tf.make_ndarray(response.outputs["top_class_names"])
    assert names.tolist() == direct["top_class_names"].numpy().tolist()
    # The class_names signature, asked for by name with no inputs.
    meta_request = predict_pb2.PredictRequest()
    meta_request.model_spec.signature_name = "class_names"
    meta = handle_predict_request(loaded, meta_request)
    assert [n.decode() for n in tf.make_ndarray(meta.outputs["class_names"])] == NAMES
