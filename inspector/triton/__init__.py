"""The shared inference tier: Triton model repositories for an engine set, and a local Triton server.

- :mod:`inspector.triton.repo`: ``inspector triton-repo`` - a model repository for an engine set
  (python, onnxruntime, openvino or tensorrt platform), each model carrying its stage's sha256;
- :mod:`inspector.triton.server`: ``inspector triton-server`` - a real ``tritonserver`` from the
  ``nvidia-pytriton`` wheel (its ``python`` backend) in a venv of its own (``make triton``);
- the client side is an engine backend: :mod:`inspector.backends.triton`.

docs/scale-out.md says how a plant runs it.
"""
