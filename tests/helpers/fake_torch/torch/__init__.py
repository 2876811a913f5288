"""A stand-in for torch, enough for npuagent.client: torch.cuda absent, torch.npu added by torch_npu.

The allocator is scripted by the environment: FAKE_TORCH_RESERVED and FAKE_TORCH_ALLOCATED (bytes per
device); empty_cache() gives back what is reserved and not allocated, as the caching allocator does.
FAKE_TORCH_CUDA=1 makes it a CUDA build instead: torch.cuda is the allocator (available), and torch_npu
is not installed (importing it fails).
"""

import os


class _Cuda:
    @staticmethod
    def is_available() -> bool:
        return False


class _Allocator:
    def __init__(self) -> None:
        self.reserved = {}
        self.allocated = {}
        self.empty_cache_calls = 0
        self.device = 0

    def _init(self, d: int) -> None:
        if d not in self.reserved:
            self.reserved[d] = float(os.environ.get("FAKE_TORCH_RESERVED", 8 << 30))
            self.allocated[d] = float(os.environ.get("FAKE_TORCH_ALLOCATED", 5 << 30))

    def is_initialized(self) -> bool:
        return True

    def current_device(self) -> int:
        return self.device

    def memory_reserved(self, d: int = 0) -> float:
        self._init(d)
        return self.reserved[d]

    def memory_allocated(self, d: int = 0) -> float:
        self._init(d)
        return self.allocated[d]

    def empty_cache(self) -> None:
        self.empty_cache_calls += 1
        for d in list(self.reserved):
            self.reserved[d] = self.allocated[d]


class _CudaAllocator(_Allocator):
    @staticmethod
    def is_available() -> bool:
        return True


cuda = _CudaAllocator() if os.environ.get("FAKE_TORCH_CUDA") else _Cuda()
