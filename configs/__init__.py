"""One `get_config()` per experiment (ml_collections), installed with the
package as `mixture_dd.configs`: `from mixture_dd.configs import digits`."""
