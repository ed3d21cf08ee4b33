"""Built-in tasks; ships as `hvbench.tasks`. Each module registers its tasks on import."""
