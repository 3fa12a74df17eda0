"""The artifact contract: what ``exporters`` write and ``runtime`` reads, declared once.

File names, the manifest's format tag and every ONNX graph's input and output
names. The export wrappers (``exporters/wrappers.py``) produce graphs with these
names; the runtime backends and ``verify`` feed and read them by these names.
"""

MANIFEST_NAME = "manifest.json"
ADAPTER_CONFIG_NAME = "adapter_config.json"  # a checkpoint directory's spec (core.checkpoint)
MANIFEST_FORMAT = "naslora-deploy-artifacts/1"

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

# prompt_decoder: embeddings + N fixed point slots (B, N, 2) / (B, N) -> one mask, its low-res logits, IoU
POINT_COORDS = "point_coords"
POINT_LABELS = "point_labels"
IOU_PREDICTIONS = "iou_predictions"
PROMPT_INPUTS = (IMAGE_EMBEDDINGS, POINT_COORDS, POINT_LABELS)
PROMPT_OUTPUTS = (MASK_LOGITS, LOW_RES_LOGITS, IOU_PREDICTIONS)


def decoder_outputs(multiclass: bool) -> tuple:
    """The prompt-free decoder's output names for a binary or multi-class head."""
    return MULTICLASS_DECODER_OUTPUTS if multiclass else BINARY_DECODER_OUTPUTS


def onnx_file(graph: str) -> str:
    """File name of a graph's ONNX export."""
    return f"{graph}.onnx"


def engine_file(graph: str) -> str:
    """File name of a graph's TensorRT engine."""
    return f"{graph}.engine"
