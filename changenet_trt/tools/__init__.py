"""Tools built on the rest: the trtexec-style bench, the device self-check (doctor) and the demo."""
