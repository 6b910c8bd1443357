"""Stage 3, statistics: one implementation of every formula the product prints
(summary.py: DistributionSummary; inference.py: t intervals, Welch, Hedges g, ANOVA)."""
