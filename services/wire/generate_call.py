"""What a gateway and a first shard agree on for a `Generate` call, beside the protobuf itself.

The sampling options travel as `SamplingParams` (converted only here), and a shard that refuses a
request for load says when to retry in the `retry-after-seconds` trailing metadata key.
"""

from services.kernel.sampling import SamplingOptions
from strata_wire import common_pb2

RETRY_AFTER_METADATA = "retry-after-seconds"
# What a caller waits when a refusal names no time (an older shard, or a malformed value).
DEFAULT_RETRY_AFTER_SECONDS = 2


def sampling_from_pb(message: common_pb2.SamplingParams) -> SamplingOptions:
    return SamplingOptions(
        temperature=message.temperature,
        top_p=message.top_p,
        top_k=message.top_k,
        seed=message.seed,
        key_position=message.key_position,
        grammar=message.grammar or None,
    )


def sampling_to_pb(options: SamplingOptions) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=options.top_k,
        seed=options.seed,
        key_position=options.key_position,
        grammar=options.grammar or "",
    )
