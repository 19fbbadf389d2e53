"""What a session with a borrowed NVIDIA machine needs to run strata there (README "A GPU run").

That machine reaches no package registry and takes at most 64 MiB per call, so the wheels and the
model's files are prepared here, split into parts that fit a call, carried over two calls and
reassembled there: `wheels` (the cp312 closure and what is carried), `parts` (split, stash,
reassemble), `host_probe` (the CUDA libraries the host has), `plan` (the calls) and `on_device.sh`
(what each call runs). Every module here uses the standard library alone: it runs on a bare
Python 3.12 before anything is installed. The GPU steps themselves are `services.app.gpu_run`.
"""
