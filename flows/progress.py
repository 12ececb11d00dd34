"""Progress reporting from a flow run to whoever started it in this process (the CLI).

Listeners are plain callables registered by the caller; the flow calls :func:`start` once and
:func:`update` after each shard. With no listener registered both do nothing.
"""

_LISTENERS = []


def add_listener(listener):
    """Register ``listener`` (an object with ``start(total, skipped)`` and ``update(result)``)."""
    _LISTENERS.append(listener)


def remove_listener(listener):
    if listener in _LISTENERS:
        _LISTENERS.remove(listener)


def start(total, skipped):
    for listener in list(_LISTENERS):
        listener.start(total, skipped)


def update(result):
    for listener in list(_LISTENERS):
        listener.update(result)
