"""Fused kernels for input-adaptive inference: functional ops that dispatch to Triton or to the PyTorch reference.

Spatial skipping (S x S patches on a block's output grid), layer skipping (compacted sub-batch) — see
`spatial_ref.py` for the shared conventions —, channel skipping (per-sample compacted channels, `channel_ref.py`)
and their maskers (window sums, decisions and index lists in Triton, `masker_ref.py`), the ViT token masker fused
into LayerNorm (`token_ref.py`), and the ViT's linear layers on listed token rows with their GELU or residual
scatter-add fused (`rows_ref.py`), the sync-free packing of those rows (`pack_ref.py`), and the network stem's
convolution on a few input channels (`stem_ref.py`). Every op chooses its implementation in `dispatch.py`. The
references themselves are not exported; the masks, index lists and result types the ops take are in `indexing.py`,
the packed weight layouts in `weights.py`, the launch helpers in `_utils.py`.
"""

from .dispatch import channel_conv1x1_in as channel_conv1x1_in
from .dispatch import channel_conv1x1_out as channel_conv1x1_out
from .dispatch import channel_conv3x3 as channel_conv3x3
from .dispatch import channel_index as channel_index
from .dispatch import channel_masker as channel_masker
from .dispatch import conv1x1_scatter_add as conv1x1_scatter_add
from .dispatch import gather_conv3x3 as gather_conv3x3
from .dispatch import layer_norm_score as layer_norm_score
from .dispatch import masker_decide as masker_decide
from .dispatch import pack_rows as pack_rows
from .dispatch import pixel_conv1x1 as pixel_conv1x1
from .dispatch import pooled_decisions as pooled_decisions
from .dispatch import resolve_impl as resolve_impl
from .dispatch import rows_add_relu_ as rows_add_relu_
from .dispatch import rows_layer_norm as rows_layer_norm
from .dispatch import rows_linear as rows_linear
from .dispatch import stem_conv as stem_conv
from .dispatch import window_sums as window_sums
from .indexing import MAP_WINDOW as MAP_WINDOW
from .indexing import MaskerDecisions as MaskerDecisions
from .indexing import conv1_pixel_mask as conv1_pixel_mask
from .indexing import conv_out_size as conv_out_size
from .indexing import mask_to_patch_idx as mask_to_patch_idx
from .indexing import mask_to_patch_list as mask_to_patch_list
from .indexing import patch_grid as patch_grid
from .indexing import patch_idx_to_mask as patch_idx_to_mask
from .indexing import patch_mask_to_pixel_mask as patch_mask_to_pixel_mask
from .indexing import pixel_mask_to_idx as pixel_mask_to_idx
from .indexing import pixel_mask_to_idx_padded as pixel_mask_to_idx_padded
from .indexing import samples_to_patch_idx as samples_to_patch_idx
from .indexing import samples_to_pixel_idx as samples_to_pixel_idx
from .indexing import window_counts as window_counts
from .indexing import window_grid as window_grid
from .weights import pack_bottleneck_weights as pack_bottleneck_weights
from .weights import pack_conv1x1_weight as pack_conv1x1_weight
from .weights import pack_conv3x3_weight as pack_conv3x3_weight
from .weights import pack_stem_weight as pack_stem_weight
