"""Real architectures for the test zoo, written in-repo with plain torch (torchvision does not
import beside torch 2.13 here).

Each builder returns a randomly initialised model in eval mode; the weights depend only on the
fixed seed, so the exported ONNX files (and the numbers the tests compare) are reproducible.
BatchNorm running statistics are randomised too: with the default (mean 0, var 1) a folded BN
would be an identity-like scale and a folding bug could hide behind it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

SEED = 0


def _randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm non-trivial affine parameters and running statistics."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            with torch.no_grad():
                module.weight.copy_(0.5 + torch.rand(c, generator=generator))
                module.bias.copy_(0.1 * torch.randn(c, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(c, generator=generator))


# --- ResNet-18 (He et al. 2016, the torchvision layout: BasicBlock [2, 2, 2, 2]) -------------------


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, in_planes = [], 64
        for planes, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers.append(nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --- MobileNetV2 (Sandler et al. 2018: inverted residuals, linear bottlenecks, ReLU6) ------------


def _conv_bn_relu6(in_c: int, out_c: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_c, out_c, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_c),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, in_c: int, out_c: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_c * expand_ratio
        self.use_residual = stride == 1 and in_c == out_c
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(in_c, hidden, 1, 1))
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, out_c, 1, 1, 0, bias=False),  # linear bottleneck: no activation
            nn.BatchNorm2d(out_c),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    # (expand ratio t, output channels c, repeats n, first stride s) from Table 2 of the paper.
    CONFIG = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        features: list[nn.Module] = [_conv_bn_relu6(3, 32, 3, 2)]
        in_c = 32
        for t, c, n, s in self.CONFIG:
            for i in range(n):
                features.append(InvertedResidual(in_c, c, s if i == 0 else 1, t))
                in_c = c
        features.append(_conv_bn_relu6(in_c, 1280, 1, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x)


# --- A small transformer encoder (pre-norm, GELU MLP) ---------------------------------------------


class EncoderLayer(nn.Module):
    """Pre-norm encoder layer written out op by op, so it exports to plain MatMul/Softmax/
    LayerNormalization/Erf instead of torch's fused multi-head-attention kernels."""

    def __init__(self, d_model: int, heads: int, d_ff: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, d_ff)
        self.act = nn.GELU()  # exact (erf) GELU
        self.fc2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # unbind, not tuple-unpacking: the tracer cannot follow tensor iteration
        attn = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, s, d))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class TinyTransformer(nn.Module):
    """Token classifier: int64 token ids [batch, seq] -> logits [batch, seq, num_classes].

    Token ids exercise an int64 input and Gather; a learned position embedding is added.
    """

    def __init__(self, vocab: int = 256, seq: int = 32, d_model: int = 64, heads: int = 4, layers: int = 2,
                 num_classes: int = 10):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(0.02 * torch.randn(1, seq, d_model))
        self.layers = nn.Sequential(*[EncoderLayer(d_model, heads, 4 * d_model) for _ in range(layers)])
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.layers(self.embed(tokens) + self.pos)))


# --- The zoo ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """How to build one model and what it takes: ``input_shape`` excludes the batch dimension."""

    build: Callable[[], nn.Module]
    input_name: str
    input_shape: tuple[int, ...]
    input_dtype: torch.dtype
    input_high: int = 0  # exclusive upper bound of integer inputs (token ids); 0 for float inputs


ZOO: dict[str, ZooEntry] = {
    "resnet18": ZooEntry(ResNet18, "x", (3, 224, 224), torch.float32),
    "mobilenetv2": ZooEntry(MobileNetV2, "x", (3, 224, 224), torch.float32),
    "transformer": ZooEntry(TinyTransformer, "tokens", (32,), torch.int64, input_high=256),
}


def build(name: str) -> nn.Module:
    """The zoo model ``name``, seeded and in eval mode."""
    if name not in ZOO:
        raise KeyError(f"unknown zoo model '{name}' (known: {', '.join(ZOO)})")
    torch.manual_seed(SEED)
    model = ZOO[name].build()
    _randomize_batchnorm(model, torch.Generator().manual_seed(SEED + 1))
    return model.eval()


def example_input(name: str, batch: int = 1) -> torch.Tensor:
    """A seeded example input of the right shape and dtype (used for export tracing)."""
    entry = ZOO[name]
    gen = torch.Generator().manual_seed(SEED + 2)
    shape = (batch, *entry.input_shape)
    if entry.input_dtype.is_floating_point:
        return torch.randn(shape, generator=gen, dtype=entry.input_dtype)
    return torch.randint(0, entry.input_high, shape, generator=gen, dtype=entry.input_dtype)
