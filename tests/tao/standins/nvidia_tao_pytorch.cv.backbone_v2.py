"""Stand-in for the package init of `nvidia_tao_pytorch.cv.backbone_v2`.

TAO's init imports every backbone it has (SAM3, SigLIP2, RADIO, OpenCLIP, ...) and the fvcore
registry; the FAN path needs only `BACKBONE_REGISTRY`, which FAN's module uses to register its
constructors by name. This init keeps the package path (every submodule, `fan` included, is TAO's
own file) and a name -> constructor registry with the `register()` / `get()` TAO calls.
"""

import os

import nvidia_tao_pytorch

__path__ = [os.path.join(os.path.dirname(nvidia_tao_pytorch.__file__), "cv", "backbone_v2")]


class _Registry:
    """Name -> backbone constructor, filled by `@BACKBONE_REGISTRY.register()`."""

    def __init__(self, name):
        self.name = name
        self._constructors = {}

    def register(self, constructor=None):
        def add(fn):
            if fn.__name__ in self._constructors:
                raise KeyError("{} is registered twice in {}".format(fn.__name__, self.name))
            self._constructors[fn.__name__] = fn
            return fn

        return add if constructor is None else add(constructor)

    def get(self, name):
        if name not in self._constructors:
            raise KeyError("no backbone {!r} in {} (registered: {})".format(name, self.name, sorted(self._constructors)))
        return self._constructors[name]

    def __contains__(self, name):
        return name in self._constructors


BACKBONE_REGISTRY = _Registry("BACKBONE")
