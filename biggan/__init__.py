"""BigGAN with SMYRF attention: models, training, metrics, data.

Shape legend: B batch; C channels; h×w spatial size; N = h·w tokens; Nq, Nk queries/keys; d query/key dim;
dv value dim; H hash rounds; nc clusters per round; cq, ck cluster sizes.
"""
