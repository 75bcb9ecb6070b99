"""Stand-in for `nvidia_tao_pytorch.core.utilities` (checkpoint decryption and ONNX encryption; imports
NVIDIA's `eff`, which is not on the package registry). Nothing is decrypted or encrypted here."""


def patch_decrypt_checkpoint(checkpoint, key):
    """TAO decrypts an encrypted checkpoint here; the tier never loads one."""
    raise RuntimeError("the tao test tier exports seeded random weights; no checkpoint is decrypted")
