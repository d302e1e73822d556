"""TF Serving's request and response formats, converted to and from a signature's tensors.

There is no TF Serving binary on these machines, so this module does the model server's
part of a request, to test (and to document) what a client must send:

* REST (`POST /v1/models/<name>:predict`): a JSON body in the row form
  `{"signature_name": ..., "instances": [...]}` or the columnar form `{"inputs": ...}`.
  Binary strings are `{"b64": "<base64>"}`. With one input tensor an instance is the
  value itself; otherwise a dict {input name: value}. The reply is `{"predictions": [one
  per instance]}` (row form) or `{"outputs": {...}}` (columnar); errors are
  `{"error": "..."}` (the server's HTTP 400 body).
* gRPC: a `tensorflow_serving.apis.predict_pb2.PredictRequest` (inputs are TensorProtos),
  answered with a `PredictResponse`. `tensorflow-serving-api` is optional: only the two
  proto functions import it.

A string output is returned as UTF-8 text, or as `{"b64": ...}` when the output's name ends
in `_bytes` or it is not valid UTF-8 (TF Serving's rule).
"""

from __future__ import annotations

import base64
import json

import numpy as np
import tensorflow as tf

DEFAULT_SIGNATURE = "serving_default"


def signature_inputs(signature) -> dict[str, tf.TensorSpec]:
    """{input name: TensorSpec} of a loaded SavedModel signature (ConcreteFunction)."""
    return dict(signature.structured_input_signature[1])


def _decode_json_value(value):
    """JSON value -> nested python lists with {"b64": ...} objects turned into bytes."""
    if isinstance(value, dict):
        if set(value) != {"b64"}:
            raise ValueError(f"a JSON object in a tensor value must be {{\"b64\": ...}}, got keys "
                             f"{sorted(value)}")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (ValueError, TypeError) as e:
            raise ValueError(f"invalid base64 in a {{\"b64\": ...}} value: {e}") from e
    if isinstance(value, list):
        return [_decode_json_value(v) for v in value]
    return value


def _to_array(value, spec: tf.TensorSpec, name: str) -> np.ndarray:
    value = _decode_json_value(value)
    try:
        array = np.array(value, dtype=object if spec.dtype == tf.string else
                         spec.dtype.as_numpy_dtype)
    except (ValueError, TypeError, OverflowError) as e:
        raise ValueError(f"input {name!r}: cannot convert to {spec.dtype.name}: {e}") from e
    if not spec.shape.is_compatible_with(array.shape):
        raise ValueError(f"input {name!r}: shape {list(array.shape)} does not match the "
                         f"signature's {spec.shape}")
    return array


def rest_request_to_inputs(body, input_specs: dict) -> tuple[dict[str, np.ndarray], bool]:
    """A REST predict body -> ({input name: array}, row_format).

    Args:
      body: the JSON body, as text or as the parsed dict.
      input_specs: `signature_inputs(signature)`.

    Raises:
      ValueError: malformed body (the problem named).
    """
    if isinstance(body, (str, bytes)):
        body = json.loads(body)
    if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
        raise ValueError("the request body must be a JSON object with exactly one of "
                         "'instances' (row format) or 'inputs' (columnar format)")
    names = sorted(input_specs)
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise ValueError("'instances' must be a non-empty list")
        if len(names) == 1 and not (isinstance(instances[0], dict) and names[0] in instances[0]):
            columns = {names[0]: instances}
        else:
            bad = [i for i, x in enumerate(instances)
                   if not isinstance(x, dict) or set(x) != set(names)]
            if bad:
                raise ValueError(f"instance {bad[0]} must be an object with the keys {names}")
            columns = {n: [x[n] for x in instances] for n in names}
        row_format = True
    else:
        inputs = body["inputs"]
        if len(names) == 1 and not (isinstance(inputs, dict) and names[0] in inputs):
            inputs = {names[0]: inputs}
        if not isinstance(inputs, dict) or set(inputs) != set(names):
            raise ValueError(f"'inputs' must be an object with the keys {names}")
        columns, row_format = inputs, False
    return {n: _to_array(columns[n], input_specs[n], n) for n in names}, row_format


def _json_value(name: str, array: np.ndarray):
    """Numpy output -> JSON-ready nested lists (strings as text or {"b64": ...})."""
    if array.dtype == object or array.dtype.kind == "S":
        def convert(item):
            if isinstance(item, list):
                return [convert(i) for i in item]
            if not name.endswith("_bytes"):
                try:
                    return item.decode("utf-8")
                except UnicodeDecodeError:
                    pass
            return {"b64": base64.b64encode(item).decode("ascii")}
        return convert(array.tolist())
    return array.tolist()


def outputs_to_rest_response(outputs: dict, row_format: bool) -> dict:
    """Signature outputs {name: [N,...] tensor or array} -> the REST response object."""
    arrays = {k: np.asarray(v) for k, v in outputs.items()}
    if not row_format:
        return {"outputs": {k: _json_value(k, v) for k, v in arrays.items()}}
    sizes = {v.shape[0] for v in arrays.values()}
    if len(sizes) != 1:
        raise ValueError(f"row format needs outputs with one batch size, got {sorted(sizes)}")
    columns = {k: _json_value(k, v) for k, v in arrays.items()}
    rows = [{k: columns[k][i] for k in columns} for i in range(sizes.pop())]
    if len(columns) == 1:  # a single output is returned bare, as TF Serving does
        rows = [next(iter(r.values())) for r in rows]
    return {"predictions": rows}


def _call(loaded, signature_name: str, arrays: dict) -> dict:
    if signature_name not in loaded.signatures:
        raise ValueError(f"serving signature name: {signature_name!r} not found in signature "
                         f"def (available: {sorted(loaded.signatures)})")
    signature = loaded.signatures[signature_name]
    specs = signature_inputs(signature)
    return signature(**{k: tf.constant(v, dtype=specs[k].dtype) for k, v in arrays.items()})


def handle_rest_request(loaded, body) -> dict:
    """What the model server does with a REST predict body, on a loaded SavedModel.

    Returns the response object: predictions/outputs, or {"error": message} for a bad
    request or an input the signature rejects (the server's HTTP 400).
    """
    try:
        parsed = json.loads(body) if isinstance(body, (str, bytes)) else body
        name = parsed.get("signature_name", DEFAULT_SIGNATURE) if isinstance(parsed, dict) \
            else DEFAULT_SIGNATURE
        if name not in loaded.signatures:
            raise ValueError(f"serving signature name: {name!r} not found in signature def")
        arrays, row_format = rest_request_to_inputs(parsed,
                                                    signature_inputs(loaded.signatures[name]))
        return outputs_to_rest_response(_call(loaded, name, arrays), row_format)
    except (ValueError, tf.errors.InvalidArgumentError) as e:
        return {"error": getattr(e, "message", None) or str(e)}


def predict_request_to_inputs(request) -> tuple[str, dict[str, np.ndarray]]:
    """A `PredictRequest` -> (signature name, {input name: array})."""
    name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    return name, {k: tf.make_ndarray(v) for k, v in request.inputs.items()}


def outputs_to_predict_response(outputs: dict, request, version: int | None = None):
    """Signature outputs -> a `PredictResponse` answering `request`.

    `output_filter` in the request limits the outputs returned, as in TF Serving.
    """
    from tensorflow_serving.apis import predict_pb2  # noqa: PLC0415 (optional dependency)

    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(request.model_spec)
    response.model_spec.signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    if version is not None:
        response.model_spec.version.value = int(version)
    wanted = list(request.output_filter) or sorted(outputs)
    unknown = sorted(set(wanted) - set(outputs))
    if unknown:
        raise ValueError(f"output_filter names unknown outputs {unknown}")
    for key in wanted:
        response.outputs[key].CopyFrom(tf.make_tensor_proto(np.asarray(outputs[key])))
    return response


def handle_predict_request(loaded, request, version: int | None = None):
    """What the model server does with a gRPC PredictRequest, on a loaded SavedModel."""
    name, arrays = predict_request_to_inputs(request)
    return outputs_to_predict_response(_call(loaded, name, arrays), request, version)
