"""`strata status` formatting: leader, term, replicas with log positions, nodes, instances with layers."""

import pytest

from services.app.operator_commands import render_status
from strata_wire import coordinator_pb2

pytestmark = pytest.mark.unit


def sample_state() -> coordinator_pb2.ClusterState:
    return coordinator_pb2.ClusterState(
        term=4,
        last_index=37,
        leader="10.0.0.1:52416",
        replicas=[
            coordinator_pb2.ReplicaInfo(
                replica_id="10.0.0.1:52416", role="leader", term=4, log_index=37, commit_index=37
            ),
            coordinator_pb2.ReplicaInfo(replica_id="10.0.0.2:52416", role="voter", term=4, log_index=36),
        ],
        shards=[
            coordinator_pb2.ShardServerInfo(
                shard_id="node-b:52417", node_id="node-b", address="10.0.0.2:52417", available_memory_bytes=2**31
            ),
            coordinator_pb2.ShardServerInfo(
                shard_id="node-a:52417", node_id="node-a", address="10.0.0.1:52417", available_memory_bytes=2**30
            ),
        ],
        instances=[
            coordinator_pb2.ModelInstance(
                instance_id="smol@5",
                model_id="smol",
                status="ready",
                stages=[
                    coordinator_pb2.Stage(shard_id="node-a:52417", start_layer=0, end_layer=19),
                    coordinator_pb2.Stage(shard_id="node-b:52417", start_layer=19, end_layer=30),
                ],
            )
        ],
    )


def test_the_header_names_leader_term_and_applied_index() -> None:
    assert render_status(sample_state()).splitlines()[0].split() == [
        "leader:", "10.0.0.1:52416", "term:", "4", "applied", "index:", "37",
    ]  # fmt: skip


def test_every_replica_is_listed_with_its_log_position() -> None:
    lines = render_status(sample_state()).splitlines()

    assert any(line.split() == ["10.0.0.1:52416", "leader", "4", "37", "37"] for line in lines)
    assert any(line.split() == ["10.0.0.2:52416", "voter", "4", "36"] for line in lines)


def test_nodes_are_sorted_and_instances_show_layer_ranges() -> None:
    text = render_status(sample_state())

    assert text.index("node-a:52417  10.0.0.1:52417") < text.index("node-b:52417  10.0.0.2:52417")
    assert "node-a:52417 [0, 19)  node-b:52417 [19, 30)" in text


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
