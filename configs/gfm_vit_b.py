"""GFM with a ViT-B/16 student (geossl's extension; REFERENCE §4): ``configs/gfm_swin_b.py`` with the
Swin-B student replaced by a ViT-B/16 at 192 px. ``:ms`` for a 13-band S2 student.

    python main.py --config=configs/gfm_vit_b.py --workdir=DIR \
        --config.data.train='/data/geopile/train-*.tfrecord' \
        --config.teacher.torch_checkpoint=/weights/swin_base_patch4_window7_224_22k.pth

The official ViT path does not run: ``VisionTransformerForSimMIM`` returns one tensor where
``SimMIM.forward`` unpacks two (reconstruction map and pooled feature), so GFM never trained a ViT.
Here the student is geossl's ViT with SimMIM's mask token (trunc-normal 0.02) replacing the masked
patch embeddings; the decoder is the same 1×1 conv + pixel shuffle with the ViT's stride (16, as
SimMIM's ViT); the distilled feature is the average of the patch tokens after block
``objective.distill_block`` (0-based; geossl's ViT returns block outputs final-normed), projected
by Linear(768, 1024) with bias onto the frozen Swin-B teacher's stage-3 feature. Default block 8
(the end of the first three quarters of the depth, as Swin-B's stage 3 ends at block 22 of 24
only roughly): a choice, not from the paper. LayerScale 0.1 as SimMIM's ViT-B config; SimMIM's
shared relative-position bias is not reproduced (absolute position embeddings). Everything else
(masks, losses, teacher, optimiser, schedule, data) is ``gfm_swin_b``'s.
"""

from __future__ import annotations

import ml_collections

from configs import common, gfm_swin_b

VARIANTS = ("ms",)


def get_config(arg=None):
    variants = common.parse_arg(arg, VARIANTS)
    c = gfm_swin_b.get_config(",".join(sorted(variants)) or None)
    c.model = ml_collections.ConfigDict(dict(
        name="vit_base_patch14", patch_size=16, layerscale_init=0.1, img_size=192,
        in_chans=c.model.in_chans, drop_path_rate=0.0, dtype="float32", remat=False))
    c.objective.distill_block = 8   # 0-based block whose patch tokens are pooled and distilled
    return c
