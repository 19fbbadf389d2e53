"""Distinct id types, so a shard id can never be passed where a model id is expected."""

from typing import NewType

ModelId = NewType("ModelId", str)
ShardId = NewType("ShardId", str)
NodeId = NewType("NodeId", str)
InstanceId = NewType("InstanceId", str)
RequestId = NewType("RequestId", str)
