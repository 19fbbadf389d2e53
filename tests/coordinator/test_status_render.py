"""`strata status` formatting: leader, term, hosts with their services, replicas with log positions,
shard servers, instances with layers, refused peers (services/app/status_view.py on fake states)."""

import pytest

from services.app.status_view import render_status
from strata_wire import coordinator_pb2

pytestmark = pytest.mark.unit


def sample_state() -> coordinator_pb2.ClusterState:
    return coordinator_pb2.ClusterState(
        term=4,
        last_index=37,
        leader="10.0.0.1:52416",
        replicas=[
            coordinator_pb2.ReplicaInfo(
                replica_id="10.0.0.1:52416",
                role="leader",
                term=4,
                log_index=37,
                commit_index=37,
                metrics_address="10.0.0.1:53416",
            ),
            coordinator_pb2.ReplicaInfo(replica_id="10.0.0.2:52416", role="voter", term=4, log_index=36),
        ],
        shards=[
            coordinator_pb2.ShardServerInfo(
                shard_id="node-b:52417",
                node_id="node-b",
                address="10.0.0.2:52417",
                available_memory_bytes=2**31,
                device="cpu",
                metrics_address="10.0.0.2:53417",
                work_per_second=3.26e9,
                fetched_bytes_from_peers=3 * 2**20,
                fetched_bytes_from_hub=5 * 2**19,
            ),
            coordinator_pb2.ShardServerInfo(
                shard_id="node-a:52417",
                node_id="node-a",
                address="10.0.0.1:52417",
                available_memory_bytes=2**30,
                device="cpu",
            ),
            coordinator_pb2.ShardServerInfo(
                shard_id="node-a:52418",
                node_id="node-a",
                address="10.0.0.1:52418",
                available_memory_bytes=2**30,
                device="cpu",
            ),
        ],
        instances=[
            coordinator_pb2.ModelInstance(
                instance_id="smol@5",
                model_id="smol",
                status="ready",
                stages=[
                    coordinator_pb2.Stage(shard_id="node-a:52417", start_layer=0, end_layer=19, status="loaded"),
                    coordinator_pb2.Stage(shard_id="node-b:52417", start_layer=19, end_layer=30, status="loaded"),
                ],
            )
        ],
        model_ids=["smol"],
        voters=["10.0.0.1:52416", "10.0.0.2:52416", "10.0.0.3:52416"],
    )


def rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


def test_the_header_names_leader_term_and_applied_index() -> None:
    assert render_status(sample_state()).splitlines()[0].split() == [
        "leader:", "10.0.0.1:52416", "term:", "4", "applied", "index:", "37", "models:", "smol",
    ]  # fmt: skip


def test_every_replica_is_listed_with_its_log_position() -> None:
    table = rows(render_status(sample_state()))

    assert ["10.0.0.1:52416", "leader", "4", "37", "37", "10.0.0.1:53416"] in table
    assert ["10.0.0.2:52416", "voter", "4", "36"] in table


def test_a_voter_the_answering_replica_has_no_view_of_is_still_listed() -> None:
    assert ["10.0.0.3:52416", "voter"] in rows(render_status(sample_state()))


def test_hosts_sum_their_shard_servers_memory_and_list_every_service_there() -> None:
    table = rows(render_status(sample_state()))

    node_a = table.index(["node-a", "10.0.0.1", "2.00", "cpu", "shard", "server", "10.0.0.1:52417"])
    assert table[node_a + 1] == ["shard", "server", "10.0.0.1:52418"]
    assert table[node_a + 2] == ["coordinator", "10.0.0.1:52416", "leader", "(metrics", "10.0.0.1:53416)"]
    assert [
        "node-b", "10.0.0.2", "2.00", "cpu", "shard", "server", "10.0.0.2:52417", "(metrics", "10.0.0.2:53417)",
    ] in table  # fmt: skip


def test_a_replica_at_a_shard_servers_address_is_listed_on_that_host() -> None:
    table = rows(render_status(sample_state()))

    assert ["(10.0.0.2)"] not in table  # node-b's shard server shares 10.0.0.2 with the voter
    assert ["node-b", "10.0.0.2", "2.00", "cpu", "shard", "server", "10.0.0.2:52417", "(metrics",
            "10.0.0.2:53417)"] in table  # fmt: skip
    assert ["coordinator", "10.0.0.2:52416", "voter"] in table


def test_a_replica_whose_address_no_shard_server_shares_is_a_host_of_its_own() -> None:
    state = sample_state()
    state.replicas.append(coordinator_pb2.ReplicaInfo(replica_id="10.0.0.3:52416", role="voter", term=4))

    assert ["(10.0.0.3)", "10.0.0.3", "coordinator", "10.0.0.3:52416", "voter"] in rows(render_status(state))


def test_shard_servers_are_sorted_with_memory_device_metrics_and_bytes_fetched() -> None:
    table = rows(render_status(sample_state()))

    first = table.index(["node-a:52417", "node-a", "10.0.0.1:52417", "1.00", "cpu", "-", "0.0", "/", "0.0"])
    second = table.index(["node-a:52418", "node-a", "10.0.0.1:52418", "1.00", "cpu", "-", "0.0", "/", "0.0"])
    third = table.index(
        ["node-b:52417", "node-b", "10.0.0.2:52417", "2.00", "cpu", "3.3", "10.0.0.2:53417", "3.0", "/", "2.5"]
    )
    assert first < second < third


def test_instances_show_their_status_and_each_stage_layer_range() -> None:
    table = rows(render_status(sample_state()))

    stage_one = table.index(["smol@5", "smol", "ready", "node-a:52417", "[0,", "19)", "loaded"])
    assert table[stage_one + 1] == ["node-b:52417", "[19,", "30)", "loaded"]


def test_a_failed_instance_shows_why() -> None:
    state = sample_state()
    state.instances[0].status = "failed"
    state.instances[0].message = "out of memory"

    assert "failed: out of memory" in render_status(state)


def test_an_empty_cluster_still_renders() -> None:
    assert "leader: (none)" in render_status(coordinator_pb2.ClusterState())


def test_refused_peers_are_listed_with_the_reason() -> None:
    state = sample_state()
    state.refused_peers.append(
        coordinator_pb2.RefusedPeer(
            address="10.0.0.9:52417", node_id="node-z", reason="protocol version 99 is incompatible with 1"
        )
    )

    text = render_status(state)

    assert "refused peers" in text
    assert "10.0.0.9:52417" in text and "protocol version 99 is incompatible" in text


def test_no_refused_peers_section_when_none_were_refused() -> None:
    assert "refused peers" not in render_status(sample_state())
