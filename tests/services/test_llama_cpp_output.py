"""Reading llama.cpp's benchmark output for the side-by-side section of `make bench`."""

import pytest

from services.app.benchmark.llama_cpp import generation_rate, parse_batched_bench

pytestmark = pytest.mark.unit

BATCHED_BENCH = """
main: n_kv_max = 4096, n_batch = 2048, n_ubatch = 512, flash_attn = 0, is_pp_shared = 0, n_gpu_layers = -1

|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|
|    64 |     64 |    1 |    128 |    0.050 |  1280.00 |    0.600 |   106.67 |    0.650 |   196.92 |
|    64 |     64 |   16 |   2048 |    0.900 |  1137.78 |    3.900 |   262.56 |    4.800 |   426.67 |

llama_perf_context_print:        load time =      40.00 ms
"""


def test_batched_bench_rates_by_parallel_sequences() -> None:
    assert parse_batched_bench(BATCHED_BENCH) == {1: 106.67, 16: 262.56}


def test_a_table_without_the_columns_gives_nothing() -> None:
    assert parse_batched_bench("| a | b |\n|---|---|\n| 1 | 2 |\n") == {}


def test_llama_bench_json_generation_rate() -> None:
    output = '[{"n_prompt": 512, "n_gen": 0, "avg_ts": 900.5}, {"n_prompt": 0, "n_gen": 64, "avg_ts": 111.9}]'

    assert generation_rate(output) == pytest.approx(111.9)


def test_llama_bench_json_without_generation_is_an_error() -> None:
    with pytest.raises(ValueError, match="no generation result"):
        generation_rate('[{"n_prompt": 512, "n_gen": 0, "avg_ts": 900.5}]')
