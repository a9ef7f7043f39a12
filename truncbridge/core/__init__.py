"""The bottom layer: the IR and its op table, the one interpreter, plan types, ring arithmetic,
protocol profiles and plan files. It imports nothing else from truncbridge."""
