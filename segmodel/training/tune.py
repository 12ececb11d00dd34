"""Re-tune a trained model's post-processing thresholds on the tune split.

Training tunes the thresholds once, at its end; this re-runs that search (for instance after
the search grid changed) and rewrites the model's ``.json`` sidecar in place::

    python -m segmodel.training.tune segmodel/weights/nuclei.keras

The validation split is never used. The model's fingerprint changes with its sidecar, so
outputs segmented with the old thresholds are redone by the next run.
"""

import json
import os
import time
from dataclasses import replace

from segmodel.model.loading import load_model, spec_path
from segmodel.training import datasets
from segmodel.training.train import tune_thresholds, tuning_record


def retune(model_path, data_dir=datasets.DEFAULT_DATA, *, images=0, log=print):
    """Tune ``model_path``'s thresholds on the tune split of ``data_dir``; return the settings.

    The spec beside the model is rewritten (atomically) with the new ``postprocess`` and a
    record of the tuning in ``training``.

    Parameters
    ----------
    model_path : str or Path
        A ``.keras`` instance model with its spec.
    data_dir : str or Path, optional
        A dataset folder (default :data:`segmodel.training.datasets.DEFAULT_DATA`).
    images : int, optional
        Use only the first that many images of the split (default 0: all of them).
    log : callable, optional
        Called with progress messages (default ``print``).

    Returns
    -------
    PostprocessSettings

    Raises
    ------
    ValueError
        If the model is not an instance model.
    FileNotFoundError
        If the model, the dataset index or any tune-split image is missing.
    """
    model = load_model(model_path)
    if model.spec.kind != "instances":
        raise ValueError(f"{model_path}: the threshold search is for instance models (three "
                         f"maps); this one is kind {model.spec.kind!r}.")
    samples = datasets.list_samples(data_dir, "tune")[: images or None]
    if not samples:
        raise FileNotFoundError(f"no tune-split images under data_dir={str(data_dir)!r}")
    settings = tune_thresholds(model, samples, object_diameter=model.spec.object_diameter,
                               log=log)
    training = {**model.spec.training, "tune_images": len(samples), **tuning_record()}
    spec = replace(model.spec, postprocess=settings, training=training)
    path = spec_path(model_path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(spec.to_dict(), indent=2, sort_keys=True))
    os.replace(tmp, path)
    return settings


def main(argv=None):
    """Command line: tune a model's thresholds (``python -m segmodel.training.tune MODEL``).

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default ``sys.argv[1:]``).
    """
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a .keras model with its .json sidecar")
    parser.add_argument("--data-dir", default=str(datasets.DEFAULT_DATA))
    args = parser.parse_args(argv)
    retune(args.model, args.data_dir,
           log=lambda m: print(time.strftime("%H:%M:%S"), m, flush=True))


if __name__ == "__main__":
    main()
