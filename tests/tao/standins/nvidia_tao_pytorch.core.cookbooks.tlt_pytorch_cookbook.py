"""Stand-in for `nvidia_tao_pytorch.core.cookbooks.tlt_pytorch_cookbook` (TAO's encrypted-checkpoint
archives; imports NVIDIA's `eff`, which is not on the package registry). The tier's models start
from seeded random weights, so no checkpoint is ever decrypted."""


class TLTPyTorchCookbook:
    """Holds the passphrase of encrypted checkpoints; the export here has none."""

    _passphrase = None

    @classmethod
    def set_passphrase(cls, passphrase):
        cls._passphrase = passphrase

    @classmethod
    def get_passphrase(cls):
        return cls._passphrase
