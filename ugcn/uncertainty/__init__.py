"""ugcn.uncertainty"""
