"""A strict fake of the ``pycuda`` package on the shared fake GPU (tests/fakes/device.py).

Only names that real pycuda (2022.1 and later) has are defined. The fixture in
tests/fakes/cuda_fixture.py installs it as ``sys.modules["pycuda"]``; the package never imports
it.
"""

VERSION = (2024, 1, 2)
VERSION_STATUS = ""
VERSION_TEXT = ".".join(str(part) for part in VERSION)
