"""Generalized linear mixed models: PIRLS, the Laplace and adaptive quadrature
deviances, and lme4's two-stage fit (docs/theory.md, eqs. 91-104)."""

from .model import DaskGeneralizedLinearMixedModel, GeneralizedLinearMixedModel, glmer

__all__ = ["DaskGeneralizedLinearMixedModel", "GeneralizedLinearMixedModel", "glmer"]
