"""What a session with a borrowed NVIDIA machine needs to run strata there (README "A GPU run").

That machine reaches no package registry and takes at most 64 MiB per call, so the wheels and the
model are downloaded here, split into parts that fit a call, carried over several calls and
reassembled there. Every module here uses the standard library alone: it runs on a bare Python 3.12
before anything is installed.
"""
