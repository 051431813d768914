"""The Open Inference Protocol on a real ``modelyard serve``, spoken by the unmodified ``tritonclient``
(HTTP and gRPC) and by hand where a client would never send such a request."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from modelyard.operator.analysis import read_exposition
from tests.support.servers import free_port
from tests.test_serving import Served, served, start_serving, stop, wait_serving  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow
MAX_REQUEST_BYTES = 256 << 10


@dataclass
class Server:
    url: str
    http: str  # host:port, as tritonclient takes it
    grpc: str
    served: Served


@pytest.fixture(scope="module")
def server(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # noqa: F811
    grpc_port = free_port()
    process, url, log = start_serving(served, tmp_path_factory.mktemp("oip-cache"), "digits@production",
                                      "--grpc-port", str(grpc_port), "--max-batch-size", "16",
                                      "--max-request-bytes", str(MAX_REQUEST_BYTES))
    try:
        wait_serving(process, url, log)
        yield Server(url, url.removeprefix("http://"), f"127.0.0.1:{grpc_port}", served)
    finally:
        stop(process)


def infer_input(module, array: np.ndarray, *, datatype: str = "FP32", name: str = "input", **options):  # noqa: ANN001, ANN201
    tensor = module.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, **options)
    return tensor


def test_tritonclient_http_health_metadata_and_infer_in_json_and_binary(server: Server) -> None:
    client = triton_http.InferenceServerClient(server.http)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")
    assert not client.is_model_ready("digits", "2") and not client.is_model_ready("other")
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    metadata = client.get_model_metadata("digits", "1")
    assert metadata["versions"] == ["1"] and metadata["platform"] == "torch-export"
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert metadata["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
    images, expected = server.served.images, server.served.expected
    for binary in (True, False):
        result = client.infer("digits", [infer_input(triton_http, images, binary_data=binary)],
                              outputs=[triton_http.InferRequestedOutput("output", binary_data=binary)],
                              request_id="r-1")
        np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-4, atol=1e-5)
        assert result.get_response()["id"] == "r-1" and result.get_response()["model_version"] == "1"
    # No outputs named: the client asks for binary outputs for the whole request.
    result = client.infer("digits", [infer_input(triton_http, images)], model_version="1")
    np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-4, atol=1e-5)
    many = np.concatenate([images] * 8)  # 40 examples: more than max_batch_size (16), run in one pass
    result = client.infer("digits", [infer_input(triton_http, many)])
    np.testing.assert_allclose(result.as_numpy("output"), np.concatenate([expected] * 8), rtol=1e-4, atol=1e-5)


def test_tritonclient_http_refusals_are_the_protocols_errors(server: Server) -> None:
    client = triton_http.InferenceServerClient(server.http)
    images = server.served.images

    def refused(model: str = "digits", version: str = "", **kwargs) -> str:  # noqa: ANN003
        with pytest.raises(InferenceServerException) as caught:
            client.infer(model, model_version=version, **kwargs)
        return f"{caught.value.status()} {caught.value.message()}"

    assert refused("other", inputs=[infer_input(triton_http, images)]).startswith("404 ")
    assert refused(version="7", inputs=[infer_input(triton_http, images)]).startswith("404 ")
    said = refused(inputs=[infer_input(triton_http, images, name="pixels")])
    assert said.startswith("400 ") and "'input'" in said
    said = refused(inputs=[infer_input(triton_http, images.astype(np.float64), datatype="FP64")])
    assert said.startswith("400 ") and "FP32" in said
    said = refused(inputs=[infer_input(triton_http, images.reshape(5, 64))])
    assert said.startswith("400 ") and "[-1, 1, 8, 8]" in said
    said = refused(inputs=[infer_input(triton_http, images)], outputs=[triton_http.InferRequestedOutput("probs")])
    assert said.startswith("400 ") and "'output'" in said


def post_infer(server: Server, body: bytes, headers: dict[str, str] | None = None,
               path: str = "/v2/models/digits/infer") -> httpx.Response:
    return httpx.post(f"{server.url}{path}", content=body, headers=headers or {}, timeout=30)


def binary_request(array: np.ndarray, *, size: int | None = None, shape: list[int] | None = None) -> tuple[bytes, int]:
    data = array.astype("<f4").tobytes()
    head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": shape or list(array.shape),
                                   "parameters": {"binary_data_size": len(data) if size is None else size}}]}).encode()
    return head + data, len(head)


def test_hostile_requests_get_4xx_in_the_protocols_shape(server: Server) -> None:
    images = server.served.images
    body, head = binary_request(images)
    ok = post_infer(server, body, {"Inference-Header-Content-Length": str(head)})
    assert ok.status_code == 200, ok.text
    cases = {
        "header longer than the body": (body, {"Inference-Header-Content-Length": str(len(body) + 1)}),
        "header not a number": (body, {"Inference-Header-Content-Length": "ten"}),
        "header cutting the JSON": (body, {"Inference-Header-Content-Length": str(head - 3)}),
        "binary size larger than what follows": (binary_request(images, size=len(images.tobytes()) + 4)[0],
                                                 {"Inference-Header-Content-Length": str(head)}),
        "a shape that lies about the bytes": (binary_request(images, shape=[9999999, 1, 8, 8])[0],
                                              {"Inference-Header-Content-Length": str(head)}),
        "bytes after the JSON with no binary input": (json.dumps({"inputs": [{"name": "input", "datatype": "FP32",
                                                      "shape": [1, 1, 8, 8], "data": [0.0] * 64}]}).encode()
                                                      + b"\0" * 8, {"Inference-Header-Content-Length": "0"}),
        "not JSON": (b"{oops", {}),
        "no inputs": (b'{"outputs": []}', {}),
        "two inputs": (json.dumps({"inputs": [{"name": "input"}, {"name": "input"}]}).encode(), {}),
        "strings for numbers": (json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8],
                                                        "data": ["0.5"] * 64}]}).encode(), {}),
        "NaN in binary": (binary_request(np.full((1, 1, 8, 8), np.nan, np.float32))[0],
                          {"Inference-Header-Content-Length": str(head - 2)}),  # shape [1,1,8,8] is 2 bytes shorter
        "data fewer than the shape": (json.dumps({"inputs": [{"name": "input", "datatype": "FP32",
                                                              "shape": [2, 1, 8, 8], "data": [0.0] * 64}]}).encode(), {}),
        "a negative dimension": (json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8],
                                                         "data": [0.0] * 64}]}).encode(), {}),
        "an empty batch": (json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [0, 1, 8, 8],
                                                   "data": []}]}).encode(), {}),
        "gzip": (body, {"Inference-Header-Content-Length": str(head), "Content-Encoding": "gzip"}),
    }
    for what, (content, headers) in cases.items():
        answer = post_infer(server, content, headers)
        assert answer.status_code == 400, (what, answer.status_code, answer.text)
        assert answer.headers["content-type"] == "application/json" and answer.json()["error"], what
    too_big = post_infer(server, b"{" + b" " * MAX_REQUEST_BYTES + b"}")
    assert too_big.status_code == 413 and "error" in too_big.json()
    assert httpx.get(f"{server.url}/v2/models/digits/versions/2", timeout=30).status_code == 404
    unknown = httpx.get(f"{server.url}/v2/nothing", timeout=30)
    assert unknown.status_code == 404 and "error" in unknown.json()
    assert httpx.get(f"{server.url}/v2/health/live", timeout=30).json() == {"live": True}


def test_tritonclient_grpc_health_metadata_and_raw_infer(server: Server) -> None:
    client = triton_grpc.InferenceServerClient(server.grpc)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits", "1")
    assert client.get_server_metadata().extensions == ["binary_tensor_data"]
    metadata = client.get_model_metadata("digits", as_json=True)
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "1", "8", "8"]}]
    images, expected = server.served.images, server.served.expected
    result = client.infer("digits", [infer_input(triton_grpc, images)],
                          outputs=[triton_grpc.InferRequestedOutput("output")], request_id="g-1")
    np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-4, atol=1e-5)
    assert result.get_response().id == "g-1"
    with pytest.raises(InferenceServerException) as caught:
        client.infer("digits", [infer_input(triton_grpc, images.reshape(5, 64))])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT" and "[-1, 1, 8, 8]" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        client.infer("other", [infer_input(triton_grpc, images)])
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as caught:
        client.infer("digits", [infer_input(triton_grpc, np.zeros((1100, 1, 8, 8), np.float32))])  # 281 KB
    assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"


def test_typed_grpc_contents_are_converted_with_the_same_strict_rules(server: Server) -> None:
    # tritonclient's own messages and stub (ours would clash with them in one process: same package).
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    images, expected = server.served.images, server.served.expected
    with grpc.insecure_channel(server.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def request(values: list[float], shape: list[int], datatype: str = "FP32") -> pb.ModelInferRequest:
            contents = pb.InferTensorContents(fp32_contents=values)
            return pb.ModelInferRequest(model_name="digits", inputs=[pb.ModelInferRequest.InferInputTensor(
                name="input", datatype=datatype, shape=shape, contents=contents)])

        answer = stub.ModelInfer(request(images.ravel().tolist(), list(images.shape)))
        outputs = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(list(answer.outputs[0].shape))
        np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-5)
        for values, shape in (([float("inf")] * 64, [1, 1, 8, 8]), ([0.0] * 63, [1, 1, 8, 8])):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(request(values, shape))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_every_protocol_route_is_counted_in_the_one_family_canary_analysis_reads(served: Served,  # noqa: F811
                                                                                   tmp_path: Path) -> None:
    grpc_port = free_port()
    process, url, log = start_serving(served, tmp_path / "cache", "digits@production", "--grpc-port", str(grpc_port))
    try:
        wait_serving(process, url, log)
        http = triton_http.InferenceServerClient(url.removeprefix("http://"))
        http.infer("digits", [infer_input(triton_http, served.images)])
        with pytest.raises(InferenceServerException):
            http.infer("digits", [infer_input(triton_http, served.images.reshape(5, 64))])
        triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}").infer(
            "digits", [infer_input(triton_grpc, served.images)])
        assert httpx.post(f"{url}/predict", json={"inputs": served.images.tolist()}, timeout=30).status_code == 200
        http.get_model_metadata("digits")  # metadata is not a model request
        text = httpx.get(f"{url}/metrics", timeout=30).text
        counted = read_exposition(text, "canary")
        assert {code: n for code, n in counted.requests.items() if n} == {"200": 3, "400": 1}
        assert 'route="/v2/models/{model}/infer",status="400"} 1.0' in text
        assert 'route="/inference.GRPCInferenceService/ModelInfer",status="200"} 1.0' in text
    finally:
        stop(process)


def test_our_proto_is_wire_compatible_with_the_protocols_clients() -> None:
    """Every message and field of ours has the number and type tritonclient's own descriptors give it
    (each module in a process of its own: both define the package ``inference``)."""
    dump = """
import json, sys, importlib
module = importlib.import_module(sys.argv[1])
def fields(message, prefix=''):
    out = {}
    for field in message.fields:
        kind = field.message_type.full_name if field.message_type else field.type
        out[prefix + message.name + '.' + field.name] = [field.number, kind, field.label]
    for nested in message.nested_types:
        out.update(fields(nested, prefix + message.name + '.'))
    return out
found = {}
for message in module.DESCRIPTOR.message_types_by_name.values():
    found.update(fields(message))
service = module.DESCRIPTOR.services_by_name['GRPCInferenceService']
found.update({'rpc ' + m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods})
print(json.dumps(found))
"""

    def read(module: str) -> dict[str, list[object]]:
        return json.loads(subprocess.run([sys.executable, "-c", dump, module], capture_output=True, text=True,
                                         check=True).stdout)

    ours, theirs = read("modelyard.bentos.oip.inference_pb2"), read("tritonclient.grpc.service_pb2")
    assert len(ours) > 60
    assert {name: spec for name, spec in ours.items() if theirs.get(name) != spec} == {}
