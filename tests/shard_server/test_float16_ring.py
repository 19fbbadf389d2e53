"""Shard processes holding float16 weights (float32 compute) give plain mlx-lm's float32 tokens.

Tiny models whose weights are float16 values, computed in float32 as `strata run` does on CPU: the
shards hold those weights in float16 (shard_server/float16_weights.py), report the bytes they hold
(AssignReply, GetStats), and generate exactly the tokens of mlx-lm in this process on float32 weights.
A shard with STRATA_FLOAT16_WEIGHTS=off holds float32, in a ring with one that holds float16: same tokens.
"""

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.kernel.ids import ModelId
from services.kernel.settings import models_root
from services.models.model_store import ModelStore
from services.platform.fast_blas import strata_kernel_active
from services.platform.grpc_server import cluster_sync_channel
from shard_server.float16_weights import SWITCH_VARIABLE, load_extension
from strata_wire import shard_pb2, shard_pb2_grpc
from tests.processes import ServiceProcess, start_lone_shards
from tests.ring_client import even_split, generate_tokens, reference_tokens, shard_stats
from tests.tiny_architectures import ARCHITECTURE_CONFIGS, NUM_LAYERS, build_tiny_half_model

PREFILL_STEP_SIZE = 4
PROMPT = [3, 17, 101, 5, 9, 250, 42, 7, 77, 301, 12]
NEW_TOKENS = 24

pytestmark = [pytest.mark.process, pytest.mark.model, pytest.mark.native, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def half_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if load_extension() is None or not strata_kernel_active():
        pytest.skip("needs the float16 linear extension and the BLAS shim's kernel (make; make test preloads it)")
    home = tmp_path_factory.mktemp("half-home")
    store = ModelStore(models_root(home))
    scratch = tmp_path_factory.mktemp("random-weights")
    for model_type in ARCHITECTURE_CONFIGS:
        build_tiny_half_model(model_type, scratch / model_type, store.model_dir(ModelId(f"tiny-{model_type}")))
    return home


@pytest.fixture(scope="module")
def shard_addresses(half_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Two shards holding float16 weights where they can, then one with the switch off."""
    logs = tmp_path_factory.mktemp("shard-logs")
    shards: list[ServiceProcess] = []
    try:
        addresses = start_lone_shards(shards, 2, half_home, logs)
        with pytest.MonkeyPatch.context() as environment:
            environment.setenv(SWITCH_VARIABLE, "off")
            addresses += start_lone_shards(shards, 1, half_home, logs)
        yield addresses
    finally:
        exit_codes = [shard.stop() for shard in shards]
    assert exit_codes == [0] * len(shards), f"shard exit codes after SIGTERM: {exit_codes}"


class _Terms:
    next_term = 1


def _assign(addresses: list[str], model_id: str, prefill_step_size: int = PREFILL_STEP_SIZE) -> tuple[str, list[int]]:
    """Loads the model over `addresses` in float32 with the real Assign RPC; the instance and each reply's bytes."""
    _Terms.next_term += 1
    instance_id = f"{model_id}@{uuid.uuid4().hex[:8]}"
    held: list[int] = []
    for index, (address, (start, end)) in enumerate(
        zip(addresses, even_split(NUM_LAYERS, len(addresses)), strict=True)
    ):
        with cluster_sync_channel(address) as channel:
            reply = shard_pb2_grpc.ShardStub(channel).Assign(
                shard_pb2.AssignRequest(
                    term=_Terms.next_term,
                    instance_id=instance_id,
                    model_id=model_id,
                    start_layer=start,
                    end_layer=end,
                    num_layers=NUM_LAYERS,
                    next_address=addresses[(index + 1) % len(addresses)],
                    prefill_step_size=prefill_step_size,
                    compute_dtype="float32",
                    ring_size=len(addresses),
                ),
                timeout=120,
            )
        held.append(reply.weight_bytes)
    return instance_id, held


def _check_tokens(address: str, instance_id: str, model_dir: Path, prefill_step_size: int = PREFILL_STEP_SIZE) -> None:
    greedy, reason = generate_tokens(address, instance_id, PROMPT, NEW_TOKENS)
    assert reason == "length"
    assert greedy == reference_tokens(model_dir, PROMPT, NEW_TOKENS, prefill_step_size, compute_dtype="float32")
    seeded, _ = generate_tokens(address, instance_id, PROMPT, NEW_TOKENS, 0.8, 0.95, seed=99)
    expected = reference_tokens(
        model_dir, PROMPT, NEW_TOKENS, prefill_step_size, 0.8, 0.95, seed=99, compute_dtype="float32"
    )
    assert seeded == expected


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURE_CONFIGS))
def test_two_shards_hold_float16_weights_and_give_mlx_lm_float32_tokens(
    half_home: Path, shard_addresses: list[str], model_type: str
) -> None:
    model_dir = models_root(half_home) / f"tiny-{model_type}"
    instance_id, held = _assign(shard_addresses[:2], f"tiny-{model_type}")
    _check_tokens(shard_addresses[0], instance_id, model_dir)
    stats = [shard_stats(address) for address in shard_addresses[:2]]
    assert [stat.weight_bytes for stat in stats] == held
    assert all(stat.compact_weight_matrices > 0 for stat in stats)
    # A mixed ring: shard 0 in float16 again, the shard with the switch off holding layers [3, 6) in float32.
    mixed_id, mixed_held = _assign([shard_addresses[0], shard_addresses[2]], f"tiny-{model_type}")
    _check_tokens(shard_addresses[0], mixed_id, model_dir)
    assert shard_stats(shard_addresses[2]).compact_weight_matrices == 0
    # The same layers in half the bytes (the norms' vectors, a few KB here, stay float32).
    assert held[1] < 0.55 * mixed_held[1]


def test_a_prefill_of_many_rows_through_the_kernels_panels_gives_mlx_lm_float32_tokens(
    half_home: Path, shard_addresses: list[str]
) -> None:
    """The whole prompt in one step: 11-row products, whose blocks are widened into a panel by a first
    row tile and read from it by the others (AVX-512), then one-row decode steps."""
    model_type = sorted(ARCHITECTURE_CONFIGS)[0]
    model_dir = models_root(half_home) / f"tiny-{model_type}"
    instance_id, _ = _assign(shard_addresses[:2], f"tiny-{model_type}", prefill_step_size=len(PROMPT))
    _check_tokens(shard_addresses[0], instance_id, model_dir, prefill_step_size=len(PROMPT))
