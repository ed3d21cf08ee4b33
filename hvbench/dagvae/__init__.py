"""`dagvae`, this project's model: latents that follow a DAG of concepts.

`concept_graph` checks a graph and orders it; `model` builds the network and
registers it (found by the model registry like any module of `hvbench.baselines`).
"""
