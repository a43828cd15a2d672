"""The reference suite of models the benchmarks time: name -> (dataset, formula)."""

MODELS = {
    "sleep_slope": ("sleepstudy", "Reaction ~ 1 + Days + (1 + Days | Subject)"),
    "sleep_zerocorr": ("sleepstudy", "Reaction ~ 1 + Days + (1 + Days || Subject)"),
    "sleep_int": ("sleepstudy", "Reaction ~ 1 + Days + (1 | Subject)"),
    "dyestuff": ("Dyestuff", "Yield ~ 1 + (1 | Batch)"),
    "dyestuff2": ("Dyestuff2", "Yield ~ 1 + (1 | Batch)"),
    "penicillin": ("Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)"),
    "pastes": ("Pastes", "strength ~ 1 + (1 | batch/cask)"),
    "cake": ("cake", "angle ~ recipe * temp + (1 | recipe:replicate)"),
    "insteval": ("InstEval", "y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)"),
}
