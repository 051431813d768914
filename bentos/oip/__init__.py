"""The Open Inference Protocol (KServe v2) for the model servers: REST and gRPC."""

GRPC_INFER_ROUTE = "/inference.GRPCInferenceService/ModelInfer"
"""The metrics label of gRPC infer requests (the method's own path); here, so that a server counts them
from the start without importing grpc where gRPC is off."""
