"""A small CNN for scikit-learn's bundled 8×8 digits, trained in seconds on a CPU.

It is the quickstart's model: real data that ships inside a package, a real
training loop, and a real ``torch.export`` program as the artifact.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.registry.model.signature import INPUT_KEY, OUTPUT_KEY, InputSignature, logits_output

INPUT_SHAPE = (1, 8, 8)
CLASSES = [str(i) for i in range(10)]


@dataclass
class TrainedDigits:
    model: Any  # torch.nn.Module
    accuracy: float
    seconds: float
    test_images: Any  # torch.Tensor [N, 1, 8, 8] float32
    test_labels: Any  # torch.Tensor [N] int64


def build_model() -> Any:
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )


def train(epochs: int = 15, seed: int = 0) -> TrainedDigits:
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    started = time.perf_counter()
    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(digits.target, dtype=torch.int64)
    x_train, x_test, y_train, y_test = train_test_split(images, labels, test_size=0.2, random_state=seed,
                                                        stratify=labels)
    model = build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for batch in order.split(64):
            optimizer.zero_grad()
            loss_fn(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return TrainedDigits(model, accuracy, time.perf_counter() - started, x_test, y_test)


def export(model: Any, path: Path) -> dict[str, Any]:
    """Save ``model`` as a ``torch.export`` archive (batch dimension dynamic); return its metadata."""
    import torch

    example = (torch.zeros(2, *INPUT_SHAPE),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, example, dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return {INPUT_KEY: InputSignature((-1, *INPUT_SHAPE), "float32").to_metadata(), OUTPUT_KEY: logits_output(CLASSES)}
