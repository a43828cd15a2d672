"""From a formula and data to the cross-products A = [Z X y]^T W [Z X y].

One pipeline for every data source: rows in memory, a pandas frame in row
chunks, a Dask frame's partitions.

- ``frame``: the model frame (used columns, missing rows dropped, factors);
- ``factors``: level coding in R's order;
- ``materialize``: formula expressions evaluated to columns (formulaic);
- ``fixed``: X and y, and X's rank check (QR with R's limited pivoting);
- ``terms``: random-effects terms (level codes, z, lambda);
- ``spec``: the design specification of data read in pieces (``DesignSpec``);
- ``layout``: the block layout of A and L;
- ``crossprod``: A accumulated from rows (``add_rows``, ``crossproducts``);
- ``reduce``: pieces of data reduced to A (``ChunkReducer``, ``reduce_design``);
- ``dask``: the same on a Dask cluster (``DaskReducer``);
- ``rows``: fitted values and residuals wherever the rows are.
"""
