"""Runs in an interpreter with terratorch and torchgeo 0.8.1 (GEOSSL_TERRATORCH_PYTHON; geossl is
not needed there): builds each geossl export as a TerraTorch UPerNet segmentation task through
examples/terratorch_finetune.py (what the README's command uses), whose encoder is the export as
a backbone of TerraTorch's registry, and writes what tests/test_terratorch.py compares with geossl.

  python tests/terratorch_job.py JOB.json OUT_DIR

JOB.json: {"cases": [{"name", "export" (.safetensors), "input" (.npy, (B,C,H,W) float32),
"wavelengths" (DOFA: geossl's, set on the backbone)}]}.
OUT_DIR/<name>.npz: the encoder's levels in eval mode (``level_i``, as TerraTorch returns them)
and the task's logits (``logits``); OUT_DIR/<name>.json: the registry name and keywords,
TerraTorch's own DOFA wavelengths, and one training step of the task: the loss before and after
a gradient step, the decrease its gradient predicts, the gradient norms of the encoder's first
layer (conv1 / patch embedding), the whole encoder, the decoder and the head.
"""

import json
import os
import re
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples"))
import terratorch_finetune as example  # noqa: E402

NUM_CLASSES = 3
DECODER_CHANNELS = 32  # TerraTorch's 256 is most of the step's time on the CPU
RELATIVE_DECREASE = 1e-4  # of the loss, predicted to first order by the gradient step


def levels(outputs) -> list[np.ndarray]:
    return [o.detach().numpy() for o in outputs]


def gradient_norm(module) -> float:
    grads = [p.grad.norm() for p in module.parameters() if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


def segmentation_step(task, images, masks) -> dict:
    """One forward / backward of the task's training step, then a step along the negative
    gradient sized to lower the loss by ``RELATIVE_DECREASE`` of itself to first order
    (s = r·loss / |g|²: the predicted decrease s·|g|²), and the loss again on the same batch with
    the same drop-path draws (the same seed). BatchNorm layers run in eval mode: with a batch of 2
    their batch statistics would be two values per channel on the smallest maps, the loss a needle
    of the weights."""
    task.train()
    for module in task.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    batch = {"image": images, "mask": masks}
    torch.manual_seed(1)
    loss = task.training_step(batch, 0)
    loss.backward()
    model = task.model
    first = next(p for n, p in model.encoder.named_parameters()
                 if p.grad is not None and re.search(r"(^|\.)(conv1|patch_embed)\.", n))
    norm = gradient_norm(task)
    report = {"loss": loss.item(), "first_layer_grad": float(first.grad.norm()),
              "encoder_grad": gradient_norm(model.encoder),
              "decoder_grad": gradient_norm(model.decoder), "head_grad": gradient_norm(model.head),
              "finite": all(bool(torch.isfinite(p.grad).all())
                            for p in task.parameters() if p.grad is not None),
              "predicted_decrease": RELATIVE_DECREASE * loss.item()}
    scale = RELATIVE_DECREASE * loss.item() / norm ** 2
    with torch.no_grad():
        for p in task.parameters():
            if p.grad is not None:
                p -= scale * p.grad
        torch.manual_seed(1)
        report["loss_after_step"] = float(task.training_step(batch, 0))
    return report


def run_case(case: dict, out_dir: str) -> None:
    """The task's encoder is the registry's backbone: TerraTorch's factory builds it with
    ``BACKBONE_REGISTRY.build(name, **kw)`` from the example's ``backbone_args``."""
    images = torch.from_numpy(np.load(case["input"]))
    name, kw, family = example.backbone_args(case["export"])
    task = example.segmentation_task(case["export"], NUM_CLASSES, channels=DECODER_CHANNELS)
    encoder = task.model.encoder
    report = {"backbone": name, "kwargs": kw, "family": family,
              "matmul_precision": torch.get_float32_matmul_precision()}
    if family == "dofa":
        report["terratorch_wavelengths"] = [float(w) for w in encoder.wavelengths]
        encoder.wavelengths = case["wavelengths"]  # geossl's, as the README says
    task.model.eval()
    with torch.no_grad():
        arrays = {f"level_{i}": a for i, a in enumerate(levels(encoder(images)))}
        arrays["logits"] = task.model(images).output.numpy()
    masks = torch.randint(0, NUM_CLASSES, images.shape[:1] + images.shape[2:],
                          generator=torch.Generator().manual_seed(0))
    report["step"] = segmentation_step(task, images, masks)
    np.savez(os.path.join(out_dir, f"{case['name']}.npz"), **arrays)
    with open(os.path.join(out_dir, f"{case['name']}.json"), "w") as f:
        json.dump(report, f)


def main() -> None:
    with open(sys.argv[1]) as f:
        job = json.load(f)
    torch.manual_seed(0)
    for case in job["cases"]:
        run_case(case, sys.argv[2])


if __name__ == "__main__":
    main()
