"""Dense contrastive pretraining (REFERENCE §5), ViT-S/14 (DINOv2 layout), 13-band S2 L1C;
``:demo`` for the CPU (a 4-block tiny ViT, patch 4, on the synthetic scenes). Fields:
configs/dense.py.

    python main.py --config=configs/dense_vit_s.py --workdir=DIR \
        --config.data.train='/data/ssl4eo/train-*.tfrecord'
    python main.py --config=configs/dense_vit_s.py:demo --workdir=/tmp/dense_demo_vit_s
"""

from configs.dense import dense


def get_config(arg=None):
    return dense("vit_small_patch14", arg, optim="adamw", lr=5e-4)
