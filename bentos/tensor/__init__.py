"""The tensor server: a BentoML service for torch.export and TorchScript programs (``/predict``,
``/predict_batch``, the Open Inference Protocol over HTTP and gRPC)."""
