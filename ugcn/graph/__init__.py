"""Graphs: the weighted GCN layer shared by both methods, voxel graphs (R) and lesion graphs (L)."""
from ugcn.graph.gcn import GCNNorm, GraphConv, gcn_normalize, graph_normalize, propagate
from ugcn.graph.lesion_graph import LesionGraphs, build_lesion_graphs
from ugcn.graph.voxel_graph import VoxelGraph, build_voxel_graph

__all__ = ["GCNNorm", "GraphConv", "LesionGraphs", "VoxelGraph", "build_lesion_graphs", "build_voxel_graph",
           "gcn_normalize", "graph_normalize", "propagate"]
