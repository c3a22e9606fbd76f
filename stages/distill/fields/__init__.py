"""Field components: the tcnn-compatible hash grid and the dynamic NeRF field built on it."""

from stages.distill.fields.dynamic_field import DynamicNeRFField, FieldOutputs
from stages.distill.fields.hash_grid_4d import HashGridEncoding, grid_levels

__all__ = ["DynamicNeRFField", "FieldOutputs", "HashGridEncoding", "grid_levels"]
