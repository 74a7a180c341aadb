"""Dense contrastive pretraining (REFERENCE §5), ResNet-50 (torchvision layout), 13-band S2 L1C;
``:demo`` for the CPU (ResNet-18 on the synthetic scenes). Fields: configs/dense.py. The LARS lr
0.6 is SoftCon's ResNet value taken as it is at this config's batch (the paper's code is
unreleased): per sample 8× SoftCon's at batch 4096.

    python main.py --config=configs/dense_rn50.py --workdir=DIR \
        --config.data.train='/data/ssl4eo/train-*.tfrecord'
    python main.py --config=configs/dense_rn50.py:demo --workdir=/tmp/dense_demo_rn50
"""

from configs.dense import dense


def get_config(arg=None):
    return dense("resnet50", arg, optim="lars", lr=0.6)
