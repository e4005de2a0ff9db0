"""The Hydra config tree, a package so that an installed gigpo finds it as ``pkg://gigpo.conf``."""
