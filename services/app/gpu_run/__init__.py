"""The GPU run itself (README "A GPU run"): a model built there from a seed, the exactness check of N
shards against mlx-lm in one process, and what `services.app.benchmark.gpu_bench` measures. Unlike
`services.app.gpu_kit`, these modules need the installed project (MLX, gRPC); each also runs on the
CPU backend (`--device cpu`), the same code path, so it is tested here end to end.
"""
