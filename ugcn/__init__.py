"""ugcn: uncertainty-driven graph networks for medical image segmentation, in JAX.

Method R refines an organ segmentation with a GCN fitted per volume on its uncertain voxels; method L
scores every predicted lesion's uncertainty with a graph network. See the README for the command line.
"""
__version__ = "0.1.0"

from ugcn.io import Volume, check_same_grid, load_mask, load_volume, save_volume

__all__ = ["__version__", "Volume", "check_same_grid", "load_mask", "load_volume", "save_volume"]
