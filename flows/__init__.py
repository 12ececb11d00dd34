"""Prefect flows of segflow.

- :func:`flows.segment_images`: segment a folder or bucket of images.
- :func:`flows.train_model`: train the nuclei model (resumable).

Attributes load on first use, so the CLI can set Prefect's environment before Prefect is
imported.
"""

import os

# A slow first start of the embedded server is normal on small machines (database
# migrations), and offline machines should not try to send telemetry.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_EXPORTS = {"SegmentParams": "flows.params", "TrainParams": "flows.params",
            "segment_images": "flows.segment", "train_model": "flows.train"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'flows' has no attribute {name!r}")
