"""Three simulated hosts (network namespaces on a bridge), each with its own STRATA_HOME and address.

Every host runs a shard server, the first also the coordinator, the second a gateway; only the first
has the model. Discovery alone forms the cluster (mDNS on each host's own address, or static `--peer`
lists with multicast off), the model is split across all three shards, the other hosts fetch the files
of their layers from the first (the gateway its tokenizer files), and the cluster answers. A shard that
stops is dropped from state and the model is re-placed on the two that remain; its host coming back
with a different address is used again."""

import secrets
from pathlib import Path

import pytest

from tests.discovery.netns_cluster import NetnsCluster, ready_stages, shard_address, stage_addresses, weight_files
from tests.fixtures import give_model
from tests.netns import NetnsLab, require_namespaces

pytestmark = [pytest.mark.netns, pytest.mark.process, pytest.mark.model, pytest.mark.timeout(600)]


def _three_hosts_answer_and_survive_a_host_moving(embedded_models: Path, tmp_path: Path, *, static: bool) -> None:
    require_namespaces()
    with NetnsLab.create(tmp_path) as lab:
        first, second, third = lab.add_host(), lab.add_host(), lab.add_host()
        give_model(embedded_models, first.home)
        cluster = NetnsCluster(lab, f"ns-{secrets.token_hex(3)}", first, static_peers=static)
        cluster.start_coordinator(minimum_shards=3)
        shards = {host.name: cluster.start_shard(host) for host in (first, second, third)}
        cluster.start_gateway(second)  # a host without the model: it fetches the tokenizer files

        formed = cluster.wait_for_state(lambda state: len(ready_stages(state)) == 3, "instance over three shards")
        assert stage_addresses(formed) == {shard_address(host) for host in (first, second, third)}
        formed_layers = ready_stages(formed)[-1].end_layer
        assert "Paris" in cluster.ask(second)
        # Only the first host had the model: the others fetched just the files of their own layers.
        all_weights = weight_files(first)
        for host in (second, third):
            fetched = weight_files(host)
            assert fetched, f"{host.name} fetched nothing"
            assert fetched < all_weights, f"{host.name} fetched the whole model"

        # The third host's shard stops: it leaves the state (its lease expires).
        cluster.stop(shards[third.name])
        cluster.wait_for_state(
            lambda state: shard_address(third) not in state.shards and len(state.shards) == 2,
            "the stopped shard dropped from state",
        )
        # Its layers are re-placed on the two that remain, and the cluster answers again.
        remaining = cluster.wait_for_state(
            lambda state: stage_addresses(state) == {shard_address(host) for host in (first, second)},
            "instance re-placed over the two remaining shards",
        )
        assert [stage.end_layer for stage in ready_stages(remaining)][-1] == formed_layers
        assert "Paris" in cluster.ask(second)
        # The host comes back with a different address and is used again (the instance is spread
        # over all three once more: a faster slowest stage is worth the re-placement).
        lab.readdress(third)
        shards[third.name] = cluster.start_shard(third)
        back = cluster.wait_for_state(
            lambda state: shard_address(third) in stage_addresses(state) and len(ready_stages(state)) == 3,
            "instance using the host at its new address",
        )
        assert shard_address(third) in back.shards
        assert "Paris" in cluster.ask(second)


def test_three_hosts_by_mdns(embedded_models: Path, tmp_path: Path) -> None:
    _three_hosts_answer_and_survive_a_host_moving(embedded_models, tmp_path, static=False)


def test_three_hosts_by_static_peers_without_multicast(embedded_models: Path, tmp_path: Path) -> None:
    _three_hosts_answer_and_survive_a_host_moving(embedded_models, tmp_path, static=True)
