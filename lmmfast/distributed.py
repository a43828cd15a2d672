"""Fitting data that does not fit in memory: Dask DataFrames and Parquet files.

``lmmfast.lmer(formula, ddf)`` with a ``dask.dataframe.DataFrame`` (or a
path, directory or glob of Parquet files) fits the model without bringing
the rows to the client (``design.dask``): each partition's partial
cross-products are summed on the cluster and rounded to A once, the same A
to the last bit as the in-memory path's, so the fit is the same.  The
result is a ``DaskLinearMixedModel``; ``predict(fit, ddf)`` predicts a Dask
frame from any fitted model.  ``lmmfast.glmer(formula, ddf, family=...)``
keeps each partition's model rows on the workers and makes every PIRLS
iteration one map-reduce over them (``glmm.dask``): a
``DaskGeneralizedLinearMixedModel``.  The computations run on whatever scheduler
Dask is using (the ``distributed.Client`` created last).  Dask is an
optional dependency: ``pip install 'lmmfast[dask]'``.
"""

from .design.dask import INSTALL_HINT, DaskReducer, exact_quantiles, is_partitioned, predict
from .glmm.model import DaskGeneralizedLinearMixedModel
from .model import DaskLinearMixedModel

__all__ = ["DaskGeneralizedLinearMixedModel", "DaskLinearMixedModel", "DaskReducer",
           "INSTALL_HINT", "exact_quantiles", "is_partitioned", "predict"]
