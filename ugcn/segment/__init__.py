"""ugcn.segment"""
