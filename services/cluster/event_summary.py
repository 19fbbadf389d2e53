"""One line of plain English per committed event, for people: the dashboard's event log.

The match is exhaustive over `Event` (`assert_never`), so a new event kind fails the type check here
until it has a sentence.
"""

from typing import assert_never

from services.cluster.events import (
    Event,
    InstancePlaced,
    InstanceReady,
    InstanceRemoved,
    ModelRegistered,
    ModelServed,
    ModelUnserved,
    NodeDrainRequested,
    ReplicasConfigured,
    ShardLeaseExpired,
    ShardRegistered,
    StageFailed,
    StageLoaded,
    TermStarted,
)

GIBIBYTE = 1024**3


def summarize_event(event: Event) -> str:
    match event:
        case ShardRegistered(shard=shard):
            memory = shard.available_memory_bytes / GIBIBYTE
            return (
                f"shard server {shard.shard_id} joined from node {shard.node_id} at {shard.address} "
                f"({shard.device}, {memory:.1f} GiB offered)"
            )
        case ModelRegistered(model=model):
            return f"model {model.model_id} registered ({model.num_layers} layers)"
        case InstancePlaced(instance_id=instance_id, model_id=model_id, num_layers=num_layers, stages=stages):
            ranges = ", ".join(f"{stage.shard_id} [{stage.start_layer}, {stage.end_layer})" for stage in stages)
            count = len(stages)
            return f"instance {instance_id} of {model_id} placed over {count} shard(s) of {num_layers} layers: {ranges}"
        case StageLoaded(instance_id=instance_id, shard_id=shard_id):
            return f"shard {shard_id} loaded its layers of instance {instance_id}"
        case StageFailed(instance_id=instance_id, shard_id=shard_id, message=message):
            return f"shard {shard_id} failed to load instance {instance_id}: {message}"
        case InstanceReady(instance_id=instance_id):
            return f"instance {instance_id} is ready to serve"
        case InstanceRemoved(instance_id=instance_id):
            return f"instance {instance_id} removed (its streams replay on another instance)"
        case ShardLeaseExpired(shard_id=shard_id):
            return f"shard server {shard_id} went silent: it left the cluster and its instances are re-placed"
        case ReplicasConfigured(voters=voters, learners=learners):
            learner_text = f"; learners {', '.join(learners)}" if learners else ""
            return f"coordinator replicas: voters {', '.join(voters) or 'none'}{learner_text}"
        case NodeDrainRequested(node_id=node_id):
            return f"node {node_id} is draining: its instances move to other shard servers"
        case ModelServed(model=model, instances=instances):
            copies = "1 instance" if instances == 1 else f"{instances} instances"
            return f"model {model.model_id} served from now on ({copies} of {model.num_layers} layers)"
        case ModelUnserved(model_id=model_id):
            return f"model {model_id} unserved: its instances are removed and their streams end"
        case TermStarted(term=term, leader=leader):
            return f"{leader} leads the coordinators in term {term}"
        case _:
            assert_never(event)
