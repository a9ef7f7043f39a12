"""From a Hugging Face model to an IR program: load, capture the ATen graph, calibrate input
ranges, lower every op (nonlinear ones by range-aware recipes)."""
