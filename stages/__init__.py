"""fourd pipeline stages: preprocess → mvgen → distill → eval (plus render for 3D assets)."""
