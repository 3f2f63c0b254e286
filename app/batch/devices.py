"""The devices a local engine can run on, as its own check sees them, without building a model:
a batch refuses a bad --device once, up front, instead of failing every slide with it."""

from __future__ import annotations


def available_devices(engine: str) -> list[str]:
    """Devices `engine` accepts on this machine (OpenVINO: what its Core finds, and AUTO). Run
    on a Dask worker too, for a cluster whose workers have other devices than this machine."""
    from app.inference.engine_registry import engine_spec

    if engine == "openvino":
        import openvino as ov

        return [*ov.Core().available_devices, "AUTO"]
    return list(dict.fromkeys([*engine_spec(engine).devices, "AUTO"]))  # both local engines take AUTO


def accepts(engine: str, device: str, available: list[str]) -> bool:
    """The engine's own rule (OpenVINO's: `device_accepted`); ONNX Runtime: a device it lists."""
    if engine == "openvino":
        from app.inference.openvino_engine import device_accepted

        return device_accepted(device, available)
    return device in available
