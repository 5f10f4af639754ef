"""SCAR (Li et al., ACL 2025): the style ranker, its training and training data, and the ``scar`` selector."""

from selectbench.selectors.scar import selector  # noqa: F401  (registers "scar")
