"""The remote endpoint: an Open Inference Protocol (KServe v2) server for an Ascend NPU host (or
any host), over ONNX Runtime. Extra `[serve]`; imports `inference` and `core`, never Qt."""
