"""`govmesh bench`: the mesh's capacity, latency and cost, measured from outside.

`capacity` runs the benchmark, `workload` makes its requests, `cpu` reads
each process's CPU time and peak memory, `echo` is the no-op gRPC server
the mesh is compared with.
"""
