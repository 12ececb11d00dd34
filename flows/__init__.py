"""Prefect flows of segflow. Importing this package imports Prefect.

- :func:`flows.segment_images`: segment a folder or bucket of images.
- :func:`flows.train_model`: train the nuclei model (resumable).
"""

import os

# Before Prefect is imported: a slow first start of the embedded server is normal on small
# machines (migrations), and offline machines should not try to send telemetry.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from flows.params import SegmentParams, TrainParams  # noqa: E402
from flows.segment import segment_images  # noqa: E402
from flows.train import train_model  # noqa: E402

__all__ = ["SegmentParams", "TrainParams", "segment_images", "train_model"]
