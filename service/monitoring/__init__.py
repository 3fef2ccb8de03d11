"""Online quality monitoring: shadow agreement between early and full-depth answers, and the threshold control
that acts on it. Pure logic only; the engine and routes feed it and read it."""
