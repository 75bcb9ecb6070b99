"""Data: TAO data sets, preprocessing into the runner's buffers, synthetic PCB pairs."""
