"""Options shared by the detection tests (a module of its own: `conftest` names clash across test folders)."""

from __future__ import annotations

# torchvision detector options that keep a CPU step small: 64-96 px images, few proposals and sampled boxes.
SMALL_RCNN = dict(min_size=64, max_size=96, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
                  rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, rpn_batch_size_per_image=64,
                  box_batch_size_per_image=64, box_detections_per_img=10)
SMALL_RETINANET = dict(min_size=64, max_size=96)


def small_kwargs(kind: str) -> dict:
    return dict(SMALL_RETINANET if kind == "retinanet" else SMALL_RCNN)
