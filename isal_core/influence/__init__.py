"""The influence formula: parameters, grad l(R) and H v, s_test solvers, I(z) over a pool, the saveable scorer."""
