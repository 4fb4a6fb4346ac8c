"""The demo and test kit: never shipped in the wheel, never imported by ``bundler``.

``demo_data`` makes the demo's sources offline (a tiny model, images assembled from
this machine's programs), ``vllm_stub`` is the OpenAI-compatible stand-in for vLLM that
runs inside one of those images, ``standins`` are the Kibana and Elasticsearch
stand-ins, and ``services`` starts the real test peers (dockerd, Podman, a registry,
olah, Nginx) on loopback. ``scripts/demo.py``, ``scripts/bench.py`` and the tests use it.
"""
