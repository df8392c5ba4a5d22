"""ugcn.lesion"""
