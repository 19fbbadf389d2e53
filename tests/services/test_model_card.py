"""Model cards: figures from the store's files, template features, sampling defaults, list and show."""

import json
import socket
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from services.app.cli import main
from services.kernel.ids import ModelId
from services.kernel.settings import models_root
from services.models.model_card import model_card
from services.models.model_files import read_manifest
from services.models.model_import import import_directory
from services.models.model_store import ModelStore
from strata_wire import coordinator_pb2
from tests.services.test_model_store import single_file_model

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

MODEL_ID = ModelId("tiny-llama")
TOOL_AND_THINK_TEMPLATE = "{% if tools %}{{ tools | tojson }}{% endif %}<think>{{ messages }}</think>"


def _stored(tmp_path: Path, extra_files: dict[str, str]) -> tuple[ModelStore, Path]:
    source = tmp_path / "source"
    single_file_model(source)
    for name, text in extra_files.items():
        (source / name).write_text(text)
    store = ModelStore(models_root(tmp_path / "home"))
    return store, import_directory(store, MODEL_ID, source)


def test_card_of_a_stored_model(tmp_path: Path) -> None:
    store, model_dir = _stored(
        tmp_path,
        {
            "generation_config.json": json.dumps({"temperature": 0.6, "top_p": 0.95, "top_k": 20, "do_sample": True}),
            "tokenizer_config.json": json.dumps({"chat_template": TOOL_AND_THINK_TEMPLATE}),
        },
    )
    manifest = read_manifest(model_dir)
    card = model_card(MODEL_ID, store.model_dir(MODEL_ID))
    assert card.architecture == "llama"
    assert card.num_layers == manifest.num_layers
    assert card.parameters == manifest.total_parameter_count
    assert card.bytes == {
        "stored": manifest.total_stored_bytes,
        "float32": 4 * card.parameters,
        "float16": 2 * card.parameters,
        "bfloat16": 2 * card.parameters,
    }
    assert card.context_length == manifest.context_length
    assert card.quantization is None
    assert card.supports_tools and card.supports_reasoning and card.has_chat_template
    assert card.generation_defaults == {"temperature": 0.6, "top_p": 0.95, "top_k": 20}
    assert card.runnable and card.unsupported_reason is None


def test_a_plain_template_supports_neither_and_bad_defaults_are_left_out(tmp_path: Path) -> None:
    store, _ = _stored(
        tmp_path,
        {
            "chat_template.jinja": "{% for m in messages %}{{ m.content }}{% endfor %}",
            "generation_config.json": json.dumps({"temperature": "hot", "top_k": 40}),
        },
    )
    card = model_card(MODEL_ID, store.model_dir(MODEL_ID))
    assert card.has_chat_template and not card.supports_tools and not card.supports_reasoning
    assert card.generation_defaults == {"top_k": 40}


def test_no_template_and_no_generation_config(tmp_path: Path) -> None:
    store, _ = _stored(tmp_path, {})
    card = model_card(MODEL_ID, store.model_dir(MODEL_ID))
    assert not card.has_chat_template and not card.supports_tools
    assert card.generation_defaults == {}


def test_list_and_show_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _stored(tmp_path, {"generation_config.json": json.dumps({"temperature": 0.7})})
    home = str(tmp_path / "home")
    assert main(["models", "list", "--home", home]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["ID", "ARCHITECTURE", "LAYERS"]
    assert table[1].split()[:2] == ["tiny-llama", "llama"]
    assert main(["models", "show", "tiny-llama", "--json", "--home", home]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == "tiny-llama"
    assert shown["generation_defaults"] == {"temperature": 0.7}
    assert main(["models", "show", "absent", "--home", home]) == 1
    assert "'absent' is not in the store" in capsys.readouterr().err
    assert main(["models", "show", "Bad/Id", "--home", home]) == 2
    assert "invalid model id" in capsys.readouterr().err


def _get_state_serving_the_model(
    request: coordinator_pb2.GetStateRequest, context: grpc.ServicerContext
) -> coordinator_pb2.ClusterState:
    """GetState as a coordinator serving MODEL_ID answers it; the rest of the service is not needed."""
    return coordinator_pb2.ClusterState(model_ids=[MODEL_ID])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_rm_is_refused_while_the_cluster_serves_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, model_dir = _stored(tmp_path, {})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    get_state = grpc.unary_unary_rpc_method_handler(
        _get_state_serving_the_model,
        request_deserializer=coordinator_pb2.GetStateRequest.FromString,
        response_serializer=coordinator_pb2.ClusterState.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("strata.v1.Coordinator", {"GetState": get_state})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        home = str(tmp_path / "home")
        assert main(["models", "rm", "tiny-llama", "--coordinator", f"127.0.0.1:{port}", "--home", home]) == 1
    finally:
        server.stop(grace=None)
    assert "serves 'tiny-llama'; stop serving it first" in capsys.readouterr().err
    assert store.has_model(MODEL_ID) and model_dir.is_dir()


def test_rm_removes_when_no_coordinator_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, _ = _stored(tmp_path, {})
    home = str(tmp_path / "home")
    assert main(["models", "rm", "tiny-llama", "--coordinator", f"127.0.0.1:{_free_port()}", "--home", home]) == 0
    captured = capsys.readouterr()
    assert "could not ask the coordinator" in captured.err
    assert "removed tiny-llama" in captured.out
    assert store.list_models() == []
    assert main(["models", "rm", "tiny-llama", "--home", home]) == 1
    assert "is not in the store" in capsys.readouterr().err
