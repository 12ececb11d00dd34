"""Keras, imported with TensorFlow's C++ start-up lines kept off the terminal.

TensorFlow's native libraries print lines such as "oneDNN custom operations are on" while they
load, before ``TF_CPP_MIN_LOG_LEVEL`` takes effect, straight to the process' standard error.
:func:`import_keras` imports Keras (and TensorFlow with it) once with that file descriptor
pointed at ``os.devnull``; Python-level errors of the import still reach the caller.
"""

import os
import sys
import threading

_LOCK = threading.Lock()


def import_keras():
    """The ``keras`` module; the first import in this process without TensorFlow's start-up lines.

    Returns
    -------
    module
    """
    if "keras" not in sys.modules:
        with _LOCK:
            if "keras" not in sys.modules:
                _import_quietly()
    return sys.modules["keras"]


def _import_quietly():
    """Import keras with file descriptor 2 on ``os.devnull``, restored afterwards."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            try:
                import keras  # noqa: F401
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)
