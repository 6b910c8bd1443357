"""Stage 3, statistics: one implementation of every formula the product prints
(summary.py: DistributionSummary, t intervals; inference.py: Welch, Hedges g, ANOVA, the regression rule)."""
