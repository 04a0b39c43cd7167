"""Cross-modal re-parameterization (Multimodal Pathway, arXiv 2401.14405) for transformer backbones."""
from pathway.checkpoint import CheckpointError, load_state_dict, load_weights
from pathway.layers import PathwayLinear
from pathway.merge import fuse_pathway, merge_pathway_, plain_state_dict, unmerge_pathway_
from pathway.surgery import (
    DEFAULT_LAYER_NAMES,
    lambda_table,
    pathway_layers,
    reparameterize_aux_into_target_model,
    set_lambdas,
)

__all__ = [
    "CheckpointError",
    "DEFAULT_LAYER_NAMES",
    "PathwayLinear",
    "fuse_pathway",
    "lambda_table",
    "load_state_dict",
    "load_weights",
    "merge_pathway_",
    "pathway_layers",
    "plain_state_dict",
    "reparameterize_aux_into_target_model",
    "set_lambdas",
    "unmerge_pathway_",
]
