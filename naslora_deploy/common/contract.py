"""The artifact contract: what ``exporters`` write and ``runtime`` reads, declared once.

File names, the manifest's format tag and every ONNX graph's input and output
names. The export wrappers (``exporters/wrappers.py``) produce graphs with these
names; the runtime backends and ``verify`` feed and read them by these names.
"""

MANIFEST_NAME = "manifest.json"
ADAPTER_CONFIG_NAME = "adapter_config.json"  # a checkpoint directory's spec (core.checkpoint)
MANIFEST_FORMAT = "naslora-deploy-artifacts/1"
# the manifest's "variant": core.model.variants.VARIANTS builds each (a test holds the two equal)
VARIANT_NAMES = ("vit_b", "vit_l", "vit_h", "vit_tiny", "litemedsam", "mobile_sam")

IMAGE_ENCODER = "image_encoder"
MASK_DECODER = "mask_decoder"
PROMPT_DECODER = "prompt_decoder"
GRAPHS = (IMAGE_ENCODER, MASK_DECODER, PROMPT_DECODER)

# image_encoder: (B, 3, S, S) normalised, padded image -> (B, C, S/16, S/16) embeddings
IMAGE = "image"
IMAGE_EMBEDDINGS = "image_embeddings"
ENCODER_INPUTS = (IMAGE,)
ENCODER_OUTPUTS = (IMAGE_EMBEDDINGS,)

# mask_decoder (prompt-free): embeddings -> (B, Q, S/4, S/4) low-res and (B, Q, S, S) logits
# [+ (B, Q, K+1) class logits]
LOW_RES_LOGITS = "low_res_logits"
MASK_LOGITS = "mask_logits"
CLASS_LOGITS = "class_logits"
DECODER_INPUTS = (IMAGE_EMBEDDINGS,)
BINARY_DECODER_OUTPUTS = (LOW_RES_LOGITS, MASK_LOGITS)
MULTICLASS_DECODER_OUTPUTS = (LOW_RES_LOGITS, MASK_LOGITS, CLASS_LOGITS)

# prompt_decoder: embeddings (E, C, h, w) + K prompts of N points (K, N, 2) / (K, N), E = 1 (shared by
# the K prompts) or E = K -> all of SAM's mask tokens: (K, M, 4h, 4w) low-res logits and (K, M) IoU
# predictions (M = 4: mask 0 is the single-mask output, masks 1-3 the multimask outputs)
POINT_COORDS = "point_coords"
POINT_LABELS = "point_labels"
IOU_PREDICTIONS = "iou_predictions"
PROMPT_INPUTS = (IMAGE_EMBEDDINGS, POINT_COORDS, POINT_LABELS)
PROMPT_OUTPUTS = (LOW_RES_LOGITS, IOU_PREDICTIONS)
# dynamic axes of the prompt decoder: embeddings per image, prompts per call, points per prompt
PROMPT_AXES = {
    IMAGE_EMBEDDINGS: {0: "images"},
    POINT_COORDS: {0: "batch", 1: "points"},
    POINT_LABELS: {0: "batch", 1: "points"},
    LOW_RES_LOGITS: {0: "batch"},
    IOU_PREDICTIONS: {0: "batch"},
}


def decoder_outputs(multiclass: bool) -> tuple:
    """The prompt-free decoder's output names for a binary or multi-class head."""
    return MULTICLASS_DECODER_OUTPUTS if multiclass else BINARY_DECODER_OUTPUTS


def onnx_file(graph: str) -> str:
    """File name of a graph's ONNX export."""
    return f"{graph}.onnx"


def engine_file(graph: str) -> str:
    """File name of a graph's TensorRT engine."""
    return f"{graph}.engine"
