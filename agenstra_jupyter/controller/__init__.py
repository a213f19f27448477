"""The controller tier: a Jupyter server extension between frontends and managers."""
