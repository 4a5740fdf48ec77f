"""OCI registries and image layouts: models as CNCF ModelPack artifacts.
"""
