"""Stand-in for nvidia-tao-core in the TAO Deploy oracle tier (not NVIDIA's package).

TAO Deploy imports one function from it, ``status_callback``, which reports a job's status to
TAO's cloud services; the real package needs Kubernetes, cloud-storage and crypto clients for
that. Here the callback does nothing (TAO still writes its status.json itself).
"""
