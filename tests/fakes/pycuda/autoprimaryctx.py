"""Fake ``pycuda.autoprimaryctx``: retain device 0's primary context and make it current in the
importing thread only (other threads have no current context), popped at exit."""

import atexit

import pycuda.driver as cuda

cuda.init()
device = cuda.Device(0)
context = device.retain_primary_context()
context.push()


def _finish_up() -> None:
    try:
        cuda.Context.pop()
    except cuda.Error:
        pass


atexit.register(_finish_up)
