"""A stand-in for torch_npu: importing it registers torch.npu, as the real one does.

With FAKE_TORCH_CUDA=1 (a CUDA build of torch) there is no torch_npu: importing it fails.
"""

import os

if os.environ.get("FAKE_TORCH_CUDA"):
    raise ModuleNotFoundError("No module named 'torch_npu'", name="torch_npu")

import torch

torch.npu = torch._Allocator()
