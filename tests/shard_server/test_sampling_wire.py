"""The sampling options and logprobs on the wire: every new field survives it; bad values are refused."""

import pytest

from services.kernel.ids import RequestId
from services.kernel.sampling import SamplingOptions
from services.wire.generate_call import sampling_from_pb, sampling_to_pb
from shard_server.ring_messages import SampledToken, SampledTokens, TokenGenerated
from shard_server.wire import (
    WireError,
    client_event_to_pb,
    ring_message_from_pb,
    ring_message_to_pb,
    start_request_from_pb,
)
from strata_wire import common_pb2, shard_pb2

pytestmark = pytest.mark.unit

REQUEST = RequestId("request-1")
# float32-exact logprobs, as the last shard computes them.
TOP = ((5, -0.125), (9, -2.5), (1, -3.75))


def test_every_sampling_option_round_trips() -> None:
    options = SamplingOptions(
        temperature=0.5,
        min_p=0.25,
        seed=3,
        logit_bias=((7, 5.0), (0, -100.0)),
        repetition_penalty=1.25,
        repetition_context_size=8,
        presence_penalty=0.5,
        frequency_penalty=-0.75,
        logprobs=True,
        top_logprobs=20,
        penalty_prompt_tokens=(1, 2, 3),
    )
    encoded = sampling_to_pb(options).SerializeToString()

    assert sampling_from_pb(common_pb2.SamplingParams.FromString(encoded)) == options


@pytest.mark.parametrize(
    "token",
    [SampledToken(REQUEST, 5, 12, -0.125, TOP), SampledToken(REQUEST, 5, 12, 0.0), SampledToken(REQUEST, 5, 12)],
)
def test_a_sampled_tokens_logprobs_round_trip(token: SampledToken) -> None:
    encoded = ring_message_to_pb(SampledTokens((token,))).SerializeToString()

    assert ring_message_from_pb(shard_pb2.RingMessage.FromString(encoded)) == SampledTokens((token,))


def test_a_generated_tokens_logprobs_reach_the_reply() -> None:
    reply = client_event_to_pb(TokenGenerated(REQUEST, 5, 0, -0.125, TOP))

    assert reply.token.HasField("logprob") and reply.token.logprob == -0.125
    assert [(entry.token_id, entry.logprob) for entry in reply.token.top_logprobs] == list(TOP)
    assert not client_event_to_pb(TokenGenerated(REQUEST, 5, 0)).token.HasField("logprob")


Params = common_pb2.SamplingParams
Bias = common_pb2.SamplingLogitBias


def generate(sampling: common_pb2.SamplingParams) -> shard_pb2.GenerateRequest:
    return shard_pb2.GenerateRequest(request_id="r", prompt_tokens=[1, 2], max_tokens=4, sampling=sampling)


@pytest.mark.parametrize(
    ("sampling", "problem"),
    [
        (Params(min_p=1.5), "min_p"),
        (Params(min_p=float("nan")), "min_p"),
        (Params(repetition_penalty=-1.0, repetition_context_size=20), "repetition_penalty"),
        (Params(repetition_penalty=1.2), "repetition_context_size"),
        (Params(presence_penalty=float("inf")), "presence_penalty"),
        (Params(logprobs=True, top_logprobs=21), "top_logprobs"),
        (Params(top_logprobs=3), "needs logprobs"),
        (Params(logit_bias=[Bias(token_id=99, bias=1.0)]), "logit_bias"),
        (Params(logit_bias=[Bias(token_id=-1, bias=1.0)]), "logit_bias"),
        (Params(logit_bias=[Bias(token_id=3, bias=float("nan"))]), "logit_bias"),
        (Params(logit_bias=[Bias(token_id=3), Bias(token_id=3)]), "twice"),
        (Params(penalty_prompt_tokens=[64]), "penalty_prompt_tokens"),
    ],
)
def test_bad_sampling_options_are_refused(sampling: common_pb2.SamplingParams, problem: str) -> None:
    with pytest.raises(WireError, match=problem):
        start_request_from_pb(generate(sampling), vocab_size=64)


def test_good_sampling_options_are_taken() -> None:
    request = start_request_from_pb(
        generate(Params(min_p=0.1, repetition_penalty=1.1, repetition_context_size=20, logprobs=True, top_logprobs=20)),
        vocab_size=64,
    )

    assert request.sampling.min_p == pytest.approx(0.1)
    assert request.sampling.top_logprobs == 20
