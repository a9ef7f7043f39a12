"""Private generation: the prefill and decode-step plans of a causal LM with a secret-shared KV cache
(``convert``), run in the ring against the float model's greedy generation (``emulate``)."""
