"""A small end-to-end training run on data fastnn makes itself: three interleaved spirals.

``python -m fastnn`` runs it: an MLP (2 -> 64 -> BatchNorm -> ReLU -> Dropout -> 64 -> ReLU -> 3)
trained with Adam and softmax cross-entropy, printing loss and accuracy per epoch.
"""
from __future__ import annotations

import time

import numpy as np

import fastnn
from fastnn import nn, optim


def make_spirals(n_per_class: int = 1000, classes: int = 3, noise: float = 0.2, seed: int = 0):
    """Points on ``classes`` interleaved spiral arms in 2-D, with labels."""
    g = np.random.default_rng(seed)
    xs, ys = [], []
    for c in range(classes):
        r = np.linspace(0.05, 1.0, n_per_class)
        theta = np.linspace(c * 2 * np.pi / classes, c * 2 * np.pi / classes + 4.0, n_per_class)
        theta = theta + g.standard_normal(n_per_class) * noise
        xs.append(np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1))
        ys.append(np.full(n_per_class, c))
    x = np.concatenate(xs).astype(np.float32)
    y = np.concatenate(ys).astype(np.int64)
    order = g.permutation(len(x))
    return x[order], y[order]


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    logits = model(x).numpy()
    model.train()
    return float((logits.argmax(axis=1) == y).mean())


def main(epochs: int = 30, batch_size: int = 64, seed: int = 0) -> float:
    fastnn.manual_seed(seed)
    x, y = make_spirals(seed=seed)
    split = int(0.8 * len(x))
    x_train, y_train, x_test, y_test = x[:split], y[:split], x[split:], y[split:]

    model = nn.Sequential(
        nn.Linear(2, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.1),
        nn.Linear(64, 64), nn.ReLU(),
        nn.Linear(64, 3),
    )
    model.needs_input_grad = False  # the data needs no gradient
    criterion = nn.CrossEntropyLoss()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    g = np.random.default_rng(seed)
    print(f"fastnn {fastnn.__version__} ({fastnn.build_info()['cpu_isa']}): "
          f"3-spiral classification, {len(x_train)} train / {len(x_test)} test points")
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = g.permutation(len(x_train))
        total, batches = 0.0, 0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples per batch in training
                continue
            loss = criterion(model(x_train[idx]), y_train[idx])
            model.backward(criterion.backward(), optimizer=opt)
            opt.zero_grad()
            total += loss.item()
            batches += 1
        if epoch == 1 or epoch % 5 == 0 or epoch == epochs:
            print(f"epoch {epoch:3d}  loss {total / batches:.4f}  "
                  f"train acc {accuracy(model, x_train, y_train):.3f}  test acc {accuracy(model, x_test, y_test):.3f}")
    test_acc = accuracy(model, x_test, y_test)
    print(f"test accuracy {test_acc:.3f} in {time.perf_counter() - start:.2f} s")
    return test_acc


if __name__ == "__main__":
    main()
