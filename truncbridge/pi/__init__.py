"""The run driver: private inference under ``mpirun`` (``launch/run_pi.py``), an application above the
pipeline and the CrypTen protocol backend (``truncbridge.backends.crypten``).

One process per party: the model owner (rank 0) builds the plans and holds the weights, the client
(rank 1) holds its input and alone learns the output, a helper (rank 2) may compute with them, and a
separate dealer (the last rank) deals correlated randomness and receives nothing but sizes.
Modules: ``options`` (the command line), ``session`` (one run from start to table), ``owner`` (plans,
references, predictions), ``client`` (the client's input and what it alone writes), ``party`` (one
party's process: CrypTen, the dealer, the link), ``link`` (software-injected network delay),
``mpi`` (the launcher's side channel: stops, the client's output), ``audit`` (every receipt checked
against the threat model), ``results`` (the table and the JSON).
"""
