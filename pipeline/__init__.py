"""Distributed batch transcoding of image datasets with MS-INN on Ray."""
