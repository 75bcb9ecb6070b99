"""Stand-in for pycuda in the TAO Deploy oracle tier (not NVIDIA's pycuda): host memory plays device memory.

Only what TAO Deploy's inferencer touches: ``pycuda.autoinit`` (nothing to initialise),
``driver.pagelocked_empty``, ``mem_alloc``, ``Stream``, ``memcpy_htod_async``/``memcpy_dtoh_async``.
"""
