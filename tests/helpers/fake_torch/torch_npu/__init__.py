"""A stand-in for torch_npu: importing it registers torch.npu, as the real one does."""

import torch

torch.npu = torch._Allocator()
