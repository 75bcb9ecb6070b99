"""``status_callback``: TAO's cloud status report, a no-op without TAO's cloud services."""


def status_callback(data_string):
    return None
