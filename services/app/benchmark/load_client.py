"""A load client with vLLM's serving-benchmark definitions, over the gateway's streaming API.

TTFT: request sent to first content chunk. ITL: time between consecutive content chunks.
TPOT: (end-to-end latency - TTFT) / (output tokens - 1), per request. Output throughput: all
output tokens / wall time of the run.
"""

import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass

import httpx
from pydantic import BaseModel


@dataclass(frozen=True)
class RequestTiming:
    time_to_first_token: float
    inter_token_latencies: tuple[float, ...]
    output_tokens: int
    latency: float

    @property
    def time_per_output_token(self) -> float | None:
        if self.output_tokens < 2:
            return None
        return (self.latency - self.time_to_first_token) / (self.output_tokens - 1)


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    timings: tuple[RequestTiming, ...]
    duration: float

    @property
    def output_tokens(self) -> int:
        return sum(timing.output_tokens for timing in self.timings)

    @property
    def output_throughput(self) -> float:
        return self.output_tokens / self.duration if self.duration > 0 else 0.0

    def percentile(self, metric: str, percent: float) -> float:
        values = self._values(metric)
        if not values:
            return float("nan")
        ordered = sorted(values)
        index = min(len(ordered) - 1, max(0, round(percent / 100 * (len(ordered) - 1))))
        return ordered[index]

    def median(self, metric: str) -> float:
        values = self._values(metric)
        return statistics.median(values) if values else float("nan")

    def _values(self, metric: str) -> list[float]:
        if metric == "ttft":
            return [timing.time_to_first_token for timing in self.timings]
        if metric == "tpot":
            return [value for timing in self.timings if (value := timing.time_per_output_token) is not None]
        if metric == "itl":
            return [value for timing in self.timings for value in timing.inter_token_latencies]
        raise ValueError(f"unknown metric {metric}")


class _Usage(BaseModel):
    completion_tokens: int = 0


class _Choice(BaseModel):
    text: str | None = None


class _Chunk(BaseModel):
    """The parts of a `text_completion` chunk the benchmark reads."""

    choices: list[_Choice] = []
    usage: _Usage | None = None


async def _one_request(client: httpx.AsyncClient, url: str, body: dict[str, object]) -> RequestTiming:
    started = time.perf_counter()
    first: float | None = None
    last = started
    gaps: list[float] = []
    reported_tokens: int | None = None
    content_chunks = 0
    request = client.build_request("POST", url, json=body, timeout=1800)
    try:
        response = await client.send(request, stream=True)
    except httpx.RemoteProtocolError:
        # A pooled keep-alive connection the server closed without answering (seen with llama-server's
        # HTTP library in a `make bench` run): no response came, so once more, on a new connection.
        response = await client.send(request, stream=True)
    try:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = _Chunk.model_validate_json(line[len("data: ") :])
            if chunk.usage is not None:
                reported_tokens = chunk.usage.completion_tokens
            if chunk.choices and chunk.choices[0].text:
                content_chunks += 1
                now = time.perf_counter()
                if first is None:
                    first = now
                else:
                    gaps.append(now - last)
                last = now
    finally:
        await response.aclose()
    end = time.perf_counter()
    # A server that reports no usage (llama-server may not) streams one token per chunk.
    output_tokens = reported_tokens if reported_tokens is not None else content_chunks
    return RequestTiming((first or end) - started, tuple(gaps), output_tokens, end - started)


def prompt_for(index: int) -> str:
    return f"Request {index}. Write a long story about a lighthouse keeper and the sea, in many details:"


async def run_load(gateway_url: str, model_id: str, concurrency: int, requests: int, max_tokens: int) -> LoadResult:
    """`requests` requests, at most `concurrency` in flight at once."""
    url = f"{gateway_url}/v1/completions"
    limiter = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4)

    async with httpx.AsyncClient(limits=limits) as client:

        async def limited(index: int) -> RequestTiming:
            async with limiter:
                body: dict[str, object] = {
                    "model": model_id,
                    "prompt": prompt_for(index),
                    "max_tokens": max_tokens,
                    "temperature": 0,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
                return await _one_request(client, url, body)

        started = time.perf_counter()
        timings = await asyncio.gather(*(limited(index) for index in range(requests)))
        duration = time.perf_counter() - started
    return LoadResult(concurrency, tuple(timings), duration)


def main(arguments: list[str]) -> None:
    """`python -m services.app.benchmark.load_client URL MODEL CONCURRENCY REQUESTS MAX_TOKENS`: prints the
    output throughput as JSON (the scale-out run starts it inside a simulated host)."""
    url, model_id, concurrency, requests, max_tokens = arguments
    result = asyncio.run(run_load(url, model_id, int(concurrency), int(requests), int(max_tokens)))
    print(json.dumps({"output_throughput": result.output_throughput}))


if __name__ == "__main__":
    main(sys.argv[1:])
