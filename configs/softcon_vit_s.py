"""SoftCon ViT-S/14 (DINOv2 layout), 13-band S2 L1C; ``:sar`` for 2-band S1, ``:demo`` for the CPU.

    python main.py --config=configs/softcon_vit_s.py --workdir=DIR \
        --config.data.train='/data/ssl4eo/train-*.tfrecord' \
        --config.init.torch_checkpoint=dinov2_vits14_pretrain.pth
"""

from configs.softcon import softcon


def get_config(arg=None):
    return softcon("vit_small_patch14", arg, optim="adamw", lr=1.5e-4 * 4096 / 256)
