"""The GPU bindings: the only modules that import tensorrt (and its lean/dispatch runtimes) and pycuda, always lazily."""
