"""ugcn.data"""
