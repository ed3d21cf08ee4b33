"""Published comparator models; ships as `hvbench.baselines`. Each module registers on import."""
