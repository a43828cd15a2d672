# Cython reads this directory as the package ``lmmfast``: the compiled modules
# are named lmmfast._factor, lmmfast._gradient, ..., and cimport each other so.
