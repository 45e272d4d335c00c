"""Train the bundled example: a small CNN on scikit-learn's digits, exported for ``compile``.

    python examples/train_digits.py            # ~10 s on 2 CPU cores; rewrites the files below

Data: ``sklearn.datasets.load_digits`` (1,797 8x8 grey images of the digits 0-9, shipped inside
scikit-learn, so nothing is downloaded), pixels scaled from 0..16 to [0, 1], split stratified by
class with a fixed seed into train 60% / calibration 10% / held-out test 30%.

Writes (into ``--out-dir``, default: this script's folder):

* ``digits_cnn.onnx``       the trained CNN, input ``x`` float32 [1, 1, 8, 8], output ``logits`` [1, 10]
* ``digits_cnn.calib.npz``  calibration split: ``x`` float32 [N, 1, 8, 8]
* ``digits_cnn.eval.npz``   held-out split: ``x`` float32 [N, 1, 8, 8], ``labels`` int64 [N]

``compile digits_cnn.onnx`` finds the two ``.npz`` sidecars by name. The script prints train and test
accuracy in PyTorch, and the test accuracy of the exported file in ONNX Runtime (batch 1), which is
the number recorded in README.md.

The split (:func:`split_digits`) needs only numpy and scikit-learn, so tests can re-derive it without
importing torch.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

SEED = 0
STEM = "digits_cnn"
#: Fractions of the whole data set; the test share is what is left (0.30).
TRAIN_FRACTION = 0.60
CALIB_FRACTION = 0.10
EPOCHS = 30
BATCH_SIZE = 32
LEARNING_RATE = 3e-3


def split_digits(seed: int = SEED) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The deterministic train/calib/test split: ``{name: (x float32 [N,1,8,8] in [0,1], y int64 [N])}``.

    Stratified by class so every split holds all ten digits in the data set's proportions.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Pixel values are integers 0..16; scale to [0, 1] and add the channel dim (NCHW).
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(
        x, y, train_size=TRAIN_FRACTION, stratify=y, random_state=seed
    )
    calib_share_of_rest = CALIB_FRACTION / (1.0 - TRAIN_FRACTION)
    x_calib, x_test, y_calib, y_test = train_test_split(
        x_rest, y_rest, train_size=calib_share_of_rest, stratify=y_rest, random_state=seed
    )
    return {"train": (x_train, y_train), "calib": (x_calib, y_calib), "test": (x_test, y_test)}


def build_model():
    """The CNN: two Conv+BatchNorm+ReLU blocks, 2x2 max pooling, Dropout, one Linear (~10k weights).

    BatchNorm and Dropout are there on purpose: the exported graph keeps BatchNormalization nodes
    for the canonicalize passes to fold (Dropout is the identity in eval mode and is not exported).
    """
    import torch
    from torch import nn

    class DigitsCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
            self.bn1 = nn.BatchNorm2d(16)
            self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
            self.bn2 = nn.BatchNorm2d(32)
            self.pool = nn.MaxPool2d(2)
            self.dropout = nn.Dropout(0.25)
            self.fc = nn.Linear(32 * 4 * 4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.bn1(self.conv1(x)))
            x = self.pool(torch.relu(self.bn2(self.conv2(x))))
            return self.fc(self.dropout(torch.flatten(x, 1)))

    return DigitsCNN()


def train(model, x: np.ndarray, y: np.ndarray, *, epochs: int = EPOCHS, seed: int = SEED) -> None:
    """Adam + cross-entropy with a cosine learning-rate decay, shuffled by a seeded generator."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(order), BATCH_SIZE):
            index = order[start : start + BATCH_SIZE]
            optimizer.zero_grad()
            loss_fn(model(inputs[index]), targets[index]).backward()
            optimizer.step()
        scheduler.step()
    model.eval()


def torch_accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        predicted = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((predicted == y).mean())


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """``numpy.savez`` with fixed zip timestamps, written atomically.

    ``numpy.savez`` stamps each member with the current time, so re-running the script would change
    the committed files' bytes even when their contents are equal; fixed timestamps keep them stable.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args(argv)

    import torch

    from compiler.accuracy import evaluate_classification, load_npz_feeds
    from compiler.export import export_torch
    from compiler.verify import ort_session

    began = time.perf_counter()
    # One thread and fixed seeds: CPU training is then bit-reproducible on a given machine.
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    splits = split_digits()
    (x_train, y_train), (x_calib, _), (x_test, y_test) = splits["train"], splits["calib"], splits["test"]
    print(f"split: train {len(x_train)}, calibration {len(x_calib)}, test {len(x_test)} (seed {SEED})")

    model = build_model()
    train(model, x_train, y_train, epochs=args.epochs)
    print(f"torch  train top-1: {torch_accuracy(model, x_train, y_train):.4f}")
    print(f"torch  test  top-1: {torch_accuracy(model, x_test, y_test):.4f}")

    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / f"{STEM}.onnx"
    # Static batch of 1: `compile` fixes no symbolic dims from the data, so a plain
    # `compile digits_cnn.onnx --target cpu` must work without --input-shape. optimize=False keeps
    # BatchNormalization in the graph for the canonicalize passes (see compiler/export.py).
    export_torch(
        model,
        (torch.from_numpy(x_test[:1]),),
        onnx_path,
        input_names=["x"],
        output_names=["logits"],
        dynamic_batch=False,
        optimize=False,
    )
    save_npz(out / f"{STEM}.calib.npz", x=x_calib)
    save_npz(out / f"{STEM}.eval.npz", x=x_test, labels=y_test)

    # The number README.md records: the exported file in ONNX Runtime, one sample per run, exactly
    # as the test and the compile report measure it.
    import onnx

    session = ort_session(onnx.load(str(onnx_path)))
    feeds, labels = load_npz_feeds(out / f"{STEM}.eval.npz", ["x"])
    result = evaluate_classification(lambda f: session.run(None, f), feeds, labels, input_names=["x"])
    correct = round(result["top1"] * result["samples"])
    print(f"onnxruntime test top-1: {result['top1']:.4f} ({correct}/{result['samples']})")
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 1024:.1f} KiB" for p in sorted(out.glob(f"{STEM}*")))
    print(f"wrote {sizes} in {time.perf_counter() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
