"""Graphs: the weighted GCN layer shared by both methods, voxel graphs (R) and lesion graphs (L)."""
from ugcn.graph.gcn import GCNNorm, GraphConv, gcn_normalize, propagate

__all__ = ["GCNNorm", "GraphConv", "gcn_normalize", "propagate"]
