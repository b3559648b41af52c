"""Conversion of VALOR weights into this project's format.

- [`convert_checkpoint`] (`python -m transformers_valor.conversion`): the published original checkpoints ->
  a saved VALOR folder, checked key by key and against an independent forward of the original weights. Its
  steps live in `config_inference` (the config from the tensor shapes), `key_mapping` (the explicit key map),
  `reference` (the independent forward and the parity check) and `convert` (end to end, processor, CLI).
- [`init_from_encoders`] (`from_encoders`): a new VALOR whose towers are copied from single-modality
  `transformers` checkpoints (BERT, CLIP vision or Video Swin, AST).
- [`resize_position_grid`] (`position_grid`): the bilinear position-grid resize both use.
"""

from .config_inference import VARIANTS, Variant, detect_variant, infer_config
from .convert import build_processor, convert_checkpoint, main
from .from_encoders import (
    NEW_WEIGHT_PATTERNS,
    InitializationReport,
    ast_patch_grid,
    convert_ast_state_dict,
    convert_clip_vision_state_dict,
    init_from_encoders,
)
from .key_mapping import TIED_DECODER_KEY, Rule, convert_state_dict, key_map, load_original_state_dict
from .position_grid import resize_position_grid
from .reference import OriginalValorReference, verify_conversion
from .report import ConversionError, ConversionReport

__all__ = [
    "VARIANTS",
    "Variant",
    "detect_variant",
    "infer_config",
    "Rule",
    "key_map",
    "convert_state_dict",
    "load_original_state_dict",
    "TIED_DECODER_KEY",
    "resize_position_grid",
    "OriginalValorReference",
    "verify_conversion",
    "build_processor",
    "convert_checkpoint",
    "main",
    "ConversionError",
    "ConversionReport",
    "init_from_encoders",
    "InitializationReport",
    "NEW_WEIGHT_PATTERNS",
    "ast_patch_grid",
    "convert_ast_state_dict",
    "convert_clip_vision_state_dict",
]
