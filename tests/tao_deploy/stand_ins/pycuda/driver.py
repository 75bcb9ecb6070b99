"""Stand-in for ``pycuda.driver``: a "device allocation" is a host byte buffer found by its address.

The TensorRT stand-in reads and writes these buffers by the addresses TAO binds with
``set_tensor_address``, so bytes travel exactly as they would through device memory.
"""

import numpy as np

#: address -> the bytes of a live allocation
ALLOCATIONS = {}


class DeviceAllocation:
    """``mem_alloc``'s result: ``int(allocation)`` is its address."""

    def __init__(self, nbytes):
        self.buffer = np.zeros(int(nbytes), dtype=np.uint8)
        self.address = int(self.buffer.ctypes.data)
        ALLOCATIONS[self.address] = self.buffer

    def __int__(self):
        return self.address

    def __index__(self):
        return self.address

    def free(self):
        ALLOCATIONS.pop(self.address, None)


def mem_alloc(nbytes):
    return DeviceAllocation(nbytes)


def pagelocked_empty(shape, dtype):
    return np.empty(shape, dtype=dtype)


class Stream:
    """Copies and kernels run when they are called; ``synchronize`` has nothing to wait for."""

    handle = 0

    def synchronize(self):
        pass


def _bytes(array):
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def memcpy_htod_async(device, host, stream=None):
    data = _bytes(host)
    device.buffer[:data.size] = data


def memcpy_dtoh_async(host, device, stream=None):
    flat = host.reshape(-1).view(np.uint8)
    flat[...] = device.buffer[:flat.size]
