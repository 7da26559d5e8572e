#!/usr/bin/env python3
"""The Python peers of the side-by-side training benchmark: the same one-hidden-layer MLP on the
digits data set (scripts/digits-export), trained by scikit-learn and by PyTorch on the CPU.

    train_peers.py --data DIR --peer sklearn|torch [--hidden 64] [--batch 64] [--epochs 30]
                   [--lr 1e-3] [--seed 0] [--reps 3] [--warmup 1]

DIR holds train.parquet and test.parquet (pixels fixed_size_list<float32, 64> in [0, 1], label
int64), read whole into numpy before anything is timed. Which Python runs this does not matter
as long as it has pyarrow, numpy and the peer's library:

    data=$(scripts/digits-export | tail -n 1)
    ~/.cache/mlinfra/venvs/train-bench/bin/python benches/compare/train_peers.py \\
        --data "$data" --peer sklearn          # the venv scripts/digits-export creates
    ~/.cache/mlinfra/venvs/loader-bench/bin/python benches/compare/train_peers.py \\
        --data "$data" --peer torch            # benches/compare/loader.sh's venv (has torch)

The model: Linear(64, hidden), ReLU, Linear(hidden, 10), softmax cross-entropy (mean over the
batch), Adam(lr, betas 0.9/0.999, eps 1e-8), `epochs` passes each over a fresh shuffle of the
training rows in batches of `batch` (the last batch of an epoch is the remainder, so
steps = epochs * ceil(n_train / batch)). Where the peers differ, each keeps its own defaults:
- sklearn: MLPClassifier(solver="adam", tol=0, n_iter_no_change=epochs+1, ...) so that exactly
  `epochs` epochs run (checked through n_iter_); its default L2 penalty alpha=1e-4 stays on
  and its weights start Glorot-uniform. Its shuffle comes from random_state=seed.
- torch: no weight decay, nn.Linear's default (Kaiming-uniform) init under
  torch.manual_seed(seed), shuffles from a torch.Generator seeded with seed (torch.randperm per
  epoch, batches gathered by slicing that permutation out of tensors built once in memory).
  The thread count is torch's default, recorded as "threads".

Timing: each rep trains a fresh model from the same seed; fit_s is the training alone (sklearn:
the `fit` call; torch: the epoch loop), never the data loading or the test pass. One untimed
warm-up run of --warmup epochs comes first (imports, lazy set-up, allocator), unless
--warmup 0.

Output, JSON lines on stdout: one per rep
    {"peer", "rep", "epochs", "batch", "hidden", "n_train", "fit_s", "samples_per_s",
     "steps", "steps_per_s", "accuracy", "loss", "threads"}
(samples_per_s = epochs * n_train / fit_s; accuracy on the test split; loss = the last epoch's
mean training loss, sklearn's with its L2 term), then one line with "summary": true and the
medians over the reps, plus the library versions. Without torch, the torch peer prints a single
line with "skipped": the reason, and exits 0.
"""

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FEATURES = 64
CLASSES = 10


def emit(**fields):
    print(json.dumps(fields), flush=True)


def load(path):
    """One Parquet file as (float32 [N, 64], int64 [N])."""
    table = pq.read_table(path, columns=["pixels", "label"])
    pixels = table.column("pixels").combine_chunks()
    # Copies (a few hundred KB): the zero-copy views of Arrow's buffers are read-only, which
    # torch.from_numpy warns about.
    x = np.array(pixels.flatten().to_numpy().reshape(-1, FEATURES), dtype=np.float32)
    y = np.array(table.column("label").to_numpy(), dtype=np.int64)
    assert x.shape == (len(y), FEATURES), x.shape
    return x, y


# --- scikit-learn ----------------------------------------------------------------------------


def sklearn_peer(args, train, test):
    import sklearn
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_info  # a scikit-learn dependency

    (x_train, y_train), (x_test, y_test) = train, test

    def fit(epochs):
        clf = MLPClassifier(
            hidden_layer_sizes=(args.hidden,),
            batch_size=args.batch,
            solver="adam",
            learning_rate_init=args.lr,
            max_iter=epochs,
            random_state=args.seed,
            # No early end: a loss that stops improving would otherwise stop it before `epochs`.
            tol=0,
            n_iter_no_change=epochs + 1,
            shuffle=True,
        )
        with warnings.catch_warnings():
            # Reaching max_iter is the point here, not a failure to converge.
            warnings.simplefilter("ignore", ConvergenceWarning)
            start = time.perf_counter()
            clf.fit(x_train, y_train)
            fit_s = time.perf_counter() - start
        assert clf.n_iter_ == epochs, (clf.n_iter_, epochs)
        return clf, fit_s

    if args.warmup:
        fit(args.warmup)
    # The forward and backward passes are numpy matmuls: the BLAS pool's size is the thread count.
    threads = max((p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"),
                  default=1)
    runs = []
    for _ in range(args.reps):
        clf, fit_s = fit(args.epochs)
        runs.append({"fit_s": fit_s, "accuracy": float(clf.score(x_test, y_test)),
                     "loss": float(clf.loss_), "threads": threads})
    return runs, {"sklearn": sklearn.__version__}


# --- PyTorch ---------------------------------------------------------------------------------


def torch_peer(args, train, test):
    import torch
    import torch.nn.functional as F
    from torch import nn

    x_train, y_train = (torch.from_numpy(a) for a in train)
    x_test, y_test = (torch.from_numpy(a) for a in test)
    n = len(y_train)

    def fit(epochs):
        torch.manual_seed(args.seed)
        model = nn.Sequential(nn.Linear(FEATURES, args.hidden), nn.ReLU(),
                              nn.Linear(args.hidden, CLASSES))
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        generator = torch.Generator().manual_seed(args.seed)
        start = time.perf_counter()
        for _ in range(epochs):
            perm = torch.randperm(n, generator=generator)
            # Summed as a tensor: an .item() per step would add a sync that sklearn does not pay.
            total = torch.zeros(())
            for i in range(0, n, args.batch):
                idx = perm[i:i + args.batch]
                loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach() * len(idx)
        fit_s = time.perf_counter() - start
        return model, fit_s, float(total) / n

    if args.warmup:
        fit(args.warmup)
    runs = []
    for _ in range(args.reps):
        model, fit_s, loss = fit(args.epochs)
        with torch.no_grad():
            accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
        runs.append({"fit_s": fit_s, "accuracy": accuracy, "loss": loss,
                     "threads": torch.get_num_threads()})
    return runs, {"torch": torch.__version__}


# --- main ------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="directory with train/test.parquet")
    parser.add_argument("--peer", choices=["sklearn", "torch"], required=True)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up epochs, 0: none")
    args = parser.parse_args()

    if args.peer == "torch":
        try:
            import torch  # noqa: F401
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            emit(peer="torch", skipped=f"torch does not import: {type(e).__name__}: {e}")
            return 0

    train = load(os.path.join(args.data, "train.parquet"))
    test = load(os.path.join(args.data, "test.parquet"))
    n_train = len(train[1])
    steps = args.epochs * math.ceil(n_train / args.batch)
    peer = {"sklearn": sklearn_peer, "torch": torch_peer}[args.peer]
    runs, versions = peer(args, train, test)

    common = {"peer": args.peer, "epochs": args.epochs, "batch": args.batch,
              "hidden": args.hidden, "n_train": n_train}
    rows = []
    for rep, run in enumerate(runs, 1):
        row = {**common, "rep": rep, "fit_s": run["fit_s"],
               "samples_per_s": args.epochs * n_train / run["fit_s"], "steps": steps,
               "steps_per_s": steps / run["fit_s"], "accuracy": run["accuracy"],
               "loss": run["loss"], "threads": run["threads"]}
        rows.append(row)
        emit(**row)
    medians = {k: statistics.median(r[k] for r in rows)
               for k in ("fit_s", "samples_per_s", "steps_per_s", "accuracy", "loss")}
    emit(**common, summary=True, reps=len(rows), steps=steps, **medians,
         threads=rows[0]["threads"], lr=args.lr, seed=args.seed, n_test=len(test[1]),
         versions={"python": platform.python_version(), "numpy": np.__version__,
                   "pyarrow": pa.__version__, **versions})
    return 0


if __name__ == "__main__":
    sys.exit(main())
