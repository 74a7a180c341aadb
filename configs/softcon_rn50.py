"""SoftCon ResNet-50 (torchvision layout), 13-band S2 L1C; ``:sar`` for S1, ``:demo`` for the CPU.

    python main.py --config=configs/softcon_rn50.py --workdir=DIR \
        --config.data.train='/data/ssl4eo/train-*.tfrecord' \
        --config.init.torch_checkpoint=dino_resnet50_pretrain.pth
"""

from configs.softcon import softcon


def get_config(arg=None):
    return softcon("resnet50", arg, optim="lars", lr=0.6)
