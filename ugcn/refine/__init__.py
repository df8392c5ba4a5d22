"""ugcn.refine"""
