"""The Open Inference Protocol (KServe v2) for the model servers: REST and gRPC."""
