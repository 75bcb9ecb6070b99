"""Stand-ins, for import only, for the modules TAO's export path imports but never runs.

TAO 7.3.0's Visual ChangeNet-Classification model module imports, at its top, the modules of every
backbone and training service it supports (distributed rank, TAO logging, the backbone registry,
pretrained-weight loading, DINO/RADIO/ViT-Adapter backbones, deformable-attention ops). The FAN
export path runs none of them; installing their stacks (fvcore, hydra, Lightning, CUDA ops) would
only make the export venv heavier. Each file here, named by the dotted module it stands in for,
defines the few names TAO imports from it: `install()` registers them in `sys.modules` before
TAO's code is imported. Everything the FAN model and its export run is TAO's own code.
"""

import importlib.util
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent


def module_names():
    """Dotted names of the modules stood in for (one `<dotted.name>.py` file each), sorted."""
    return sorted(p.stem for p in HERE.glob("*.py") if p.name != "__init__.py")


def install():
    """Load every stand-in and register it in `sys.modules` (parents first); returns the names."""
    names = module_names()
    for name in names:
        spec = importlib.util.spec_from_file_location(name, HERE / (name + ".py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return names
