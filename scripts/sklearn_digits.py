#!/usr/bin/env python3
"""scikit-learn's time to 0.95 held-out accuracy on the digits data that `mlp-digits` trains on.

The reference figure for `host train`: the same rows (tasks/data/digits.csv.gz, pixels / 16),
a stratified 25% held-out split, and the same model, 64 -> 64 (ReLU) -> 10 with Glorot-uniform
weights (scikit-learn draws the biases from the same range; mlp-digits starts them at zero),
trained epoch by epoch with `MLPClassifier.partial_fit` in minibatches of 32.

The main figures use plain minibatch SGD: `solver="sgd"` with no momentum, a constant learning
rate and no L2 penalty (`alpha=0`), which is the update `mlp-digits` makes
(`params -= lr * grad` of the batch's mean cross-entropy) in its local mode; the learning rate
defaults to that task's default, 0.5. The same loop with Adam (scikit-learn's default solver,
at its default rate) is reported under "adam", and a default `fit` run to convergence under
"fit_*".

Seconds count training only (the `partial_fit` calls, not the evaluation after each epoch), in
one process with numpy's BLAS on one thread by default (`--blas-threads`): these matrices are
too small to gain from more, and on a busy machine extra BLAS threads made `fit` 5 to 25 times
slower. Needs numpy and scikit-learn; prints one JSON object on stdout.

Usage: scripts/sklearn_digits.py [--seed N] [--epochs N] [--lr X] [--blas-threads N] [--data PATH]
"""

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import sklearn
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_info, threadpool_limits

TARGET = 0.95
HIDDEN = (64,)
BATCH = 32
DEFAULT_DATA = Path(__file__).resolve().parent.parent / "tasks" / "data" / "digits.csv.gz"


def load(path):
    """64 pixels scaled to [0, 1] and the label, per row."""
    rows = np.loadtxt(path, delimiter=",", dtype=np.int64)
    if rows.ndim != 2 or rows.shape[1] != 65:
        raise SystemExit(f"{path}: expected rows of 65 integers, got shape {rows.shape}")
    return rows[:, :64] / 16.0, rows[:, 64]


def cpu_model():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def epochs_to_target(model, split, epochs):
    """Trains `model` one epoch per `partial_fit` call; returns the time and epoch of the
    first held-out accuracy >= TARGET (or None), and the figures at the end."""
    x_train, x_test, y_train, y_test = split
    classes = np.unique(y_train)
    seconds = 0.0
    reached = None
    accuracy = 0.0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.partial_fit(x_train, y_train, classes=classes)
        seconds += time.perf_counter() - start
        accuracy = float(model.score(x_test, y_test))
        if reached is None and accuracy >= TARGET:
            reached = (seconds, epoch)
    return {
        "seconds_to_095": reached[0] if reached else None,
        "epochs_to_095": reached[1] if reached else None,
        "final_accuracy": accuracy,
        "epochs": epochs,
        "seconds": seconds,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="split, initialisation and shuffling")
    parser.add_argument("--epochs", type=int, default=50, help="passes over the training rows")
    parser.add_argument("--lr", type=float, default=0.5, help="the SGD learning rate")
    parser.add_argument("--blas-threads", type=int, default=1, help="0: BLAS's own default")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    if args.blas_threads > 0:
        threadpool_limits(limits=args.blas_threads, user_api="blas")

    x, y = load(args.data)
    split = train_test_split(x, y, test_size=0.25, stratify=y, random_state=args.seed)

    # Plain minibatch SGD: no momentum, constant rate, no weight decay.
    sgd = MLPClassifier(
        hidden_layer_sizes=HIDDEN,
        solver="sgd",
        learning_rate="constant",
        learning_rate_init=args.lr,
        momentum=0.0,
        nesterovs_momentum=False,
        alpha=0.0,
        batch_size=BATCH,
        shuffle=True,
        random_state=args.seed,
    )
    result = {"solver": "sgd", "lr": args.lr, "batch": BATCH}
    result.update(epochs_to_target(sgd, split, args.epochs))

    adam = MLPClassifier(
        hidden_layer_sizes=HIDDEN, solver="adam", batch_size=BATCH, random_state=args.seed
    )
    result["adam"] = epochs_to_target(adam, split, args.epochs)

    # The reference: default settings (Adam, batches of 200, L2 1e-4), run until the training
    # loss stops improving by `tol` for 10 epochs, with room to get there.
    x_train, x_test, y_train, y_test = split
    fit = MLPClassifier(hidden_layer_sizes=HIDDEN, max_iter=2000, random_state=args.seed)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit.fit(x_train, y_train)
    result["fit_seconds"] = time.perf_counter() - start
    result["fit_iterations"] = int(fit.n_iter_)
    result["fit_accuracy"] = float(fit.score(x_test, y_test))

    result["train_rows"] = len(y_train)
    result["test_rows"] = len(y_test)
    result["seed"] = args.seed
    result["sklearn"] = sklearn.__version__
    result["cpu"] = cpu_model()
    blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    result["blas_threads"] = max(blas, default=None)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
