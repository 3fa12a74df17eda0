"""Inference backends the runtime owns: TensorRT and onnxruntime, behind one ``Backend`` protocol.

Every backend offers ``encode(images)`` -> an embeddings handle (which may stay
on the GPU) and ``decode(handle)`` / ``prompt_decode(handle, coords, labels)``
-> numpy outputs named as in the artifact contract. Heavy libraries are
imported lazily in the backend that needs them. Other backends (the PyTorch one
lives in ``exporters.torch_backend``) are built by the caller and handed to
``Segmenter``, the way Polygraphy's runners are handed a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Protocol

import numpy as np

from naslora_deploy.common import contract as names
from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.lazy import lazy_import
from naslora_deploy.runtime.engines import import_tensorrt, load_checked_engine
from naslora_deploy.runtime.manifest import (
    Manifest,
    artifact_file,
    check_image_input,
    is_listed,
    rebuild_hint,
)
from naslora_deploy.runtime.prompts import mask_feeds

RUNTIME_BACKENDS = ("auto", "tensorrt", "onnxruntime")


class Backend(Protocol):
    """What ``Segmenter`` needs of a backend.

    ``name``: says what runs the model (e.g. ``onnxruntime (CUDA)``); ``on_gpu``.
    ``encode``: (B, 3, S, S) float32 -> an embeddings handle (an array, a device
    buffer, a tensor: only this backend's ``decode`` and ``prompt_decode`` read it).
    ``decode``: handle -> {``low_res_logits``, ``mask_logits`` [, ``class_logits``]}.
    ``prompt_decode``: handle of E images, (K, N, 2) coords, (K, N) labels (E = 1
    or K) -> {``low_res_logits`` (K, M, 4h, 4w), ``iou_predictions`` (K, M)};
    ``mask_input`` (B, 1, 4h, 4w) earlier low-res logits (B = 1 or K) is passed
    only when given (``prompts.mask_feeds`` feeds it, or "no mask", to the graph).
    Optional: ``max_prompts`` (most K per call), ``reuses_embeddings`` (the next
    ``encode`` overwrites the last handle's embeddings).
    """

    name: str
    on_gpu: bool

    def encode(self, images: np.ndarray): ...

    def decode(self, embeddings) -> Dict[str, np.ndarray]: ...

    def prompt_decode(self, embeddings, coords: np.ndarray, labels: np.ndarray) -> Dict[str, np.ndarray]: ...


ORT_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def ort_session(path: Path, providers):
    """An onnxruntime session on ``providers`` (a name or a list, best first), quiet logging.

    Idle intra-op threads do not busy-wait after a run: the runtime runs the
    encoder and decoder sessions back to back, and spinning threads of one took
    cores from the other. Measured on vit_tiny, 2-core
    CPU, encoder + decoder: 9.4 vs 11.3 ms median at batch 1, 32.2 vs 38.5 at batch 4.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        str(path), options, providers=[providers] if isinstance(providers, str) else list(providers)
    )


def open_graph(directory: Path, manifest: Manifest, graph: str, providers):
    """A session on one of the artifact's listed graphs, checked against the manifest.

    The file must be listed (``artifact_file``); onnxruntime's own refusals (a
    damaged graph, external data outside the directory) and a graph that does not
    fit the manifest (image size, head) become one ``NasloraError`` line.
    """
    path = artifact_file(directory, manifest, names.onnx_file(graph))
    try:
        session = ort_session(path, providers)
    except NasloraError:
        raise
    except Exception as exc:  # onnxruntime raises its own types (Fail, InvalidGraph, ...)
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NasloraError(
            f"onnxruntime cannot load {path} ({text[:200]}); export the artifacts again"
        ) from None
    check_graph(
        manifest,
        path,
        graph,
        [i.shape for i in session.get_inputs()],
        [o.name for o in session.get_outputs()],
    )
    return session


def check_graph(manifest: Manifest, path, graph: str, input_shapes, output_names) -> None:
    """A graph's inputs and outputs against the manifest: its image size, its binary or multi-class head."""
    if graph == names.IMAGE_ENCODER:
        check_image_input(manifest, path, input_shapes[0] if input_shapes else None)
    if graph == names.PROMPT_DECODER:
        check_prompt_graph(manifest, path, output_names)
    if graph == names.MASK_DECODER:
        expected = names.decoder_outputs(manifest.multiclass)
        if tuple(output_names) != tuple(expected):
            raise NasloraError(
                f"{path} has outputs {', '.join(output_names)}, but the manifest's head {manifest.head!r} "
                f"needs {', '.join(expected)} (the manifest was changed); export the artifacts again"
            )


def check_prompt_graph(manifest: Manifest, path, output_names) -> None:
    """The prompt decoder must give every mask token's logits and IoU (multimask), and the manifest's
    point slots (the TensorRT profile's points) must agree with its export section."""
    if tuple(output_names) != names.PROMPT_OUTPUTS:
        raise NasloraError(
            f"{path} has outputs {', '.join(output_names)}, not {', '.join(names.PROMPT_OUTPUTS)}: it was "
            "exported by an older naslora-deploy without multimask outputs; export the artifacts again"
        )
    slots = manifest.prompt_point_slots
    exported = manifest.export.get("point_slots")
    if isinstance(exported, int) and slots != exported + 2:
        raise NasloraError(
            f"the manifest says {slots} prompt point slots, but its export section says {exported} + 2 "
            "(the manifest was changed); export the artifacts again"
        )


def available_providers() -> List[str]:
    """The onnxruntime execution providers installed here, best first."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [p for p in ORT_ORDER if p in have]


class OnnxRuntimeBackend:
    """onnxruntime sessions, best execution provider first; on a GPU the encoder's
    output stays on the device and is bound straight into the decoder."""

    def __init__(self, directory: Path, manifest: Manifest, providers: Optional[List[str]] = None) -> None:
        ort = lazy_import("onnxruntime", "pip:onnxruntime (or onnxruntime-gpu)", "the onnxruntime backend")
        available = ort.get_available_providers()
        chosen = providers or available_providers()
        missing = [p for p in chosen if p not in available]
        if missing:
            raise NasloraError(
                f"onnxruntime provider {missing[0]} is not available here (have: {', '.join(available)})"
            )
        self.sessions = {
            graph: open_graph(directory, manifest, graph, chosen)
            for graph in names.GRAPHS
            if is_listed(manifest, names.onnx_file(graph))
        }
        used = self.sessions[names.IMAGE_ENCODER].get_providers()[0]
        self.on_gpu = used != "CPUExecutionProvider"
        self.name = f"onnxruntime ({used.replace('ExecutionProvider', '')})"

    def encode(self, images: np.ndarray):
        session = self.sessions[names.IMAGE_ENCODER]
        if not self.on_gpu:
            return session.run(None, {names.IMAGE: images})[0]
        binding = session.io_binding()
        binding.bind_cpu_input(names.IMAGE, images)
        binding.bind_output(names.IMAGE_EMBEDDINGS, "cuda")
        session.run_with_iobinding(binding)
        return binding.get_outputs()[0]  # an OrtValue on the GPU

    def _run(self, name: str, feeds: Dict[str, object]) -> Dict[str, np.ndarray]:
        session = self.sessions[name]
        outputs = [o.name for o in session.get_outputs()]
        if not self.on_gpu:
            return dict(zip(outputs, session.run(None, feeds)))
        binding = session.io_binding()
        for key, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(key, value)
            else:
                binding.bind_ortvalue_input(key, value)
        for output in outputs:
            binding.bind_output(output, "cpu")
        session.run_with_iobinding(binding)
        return dict(zip(outputs, binding.copy_outputs_to_cpu()))

    def decode(self, embeddings) -> Dict[str, np.ndarray]:
        return self._run(names.MASK_DECODER, {names.IMAGE_EMBEDDINGS: embeddings})

    def prompt_decode(
        self, embeddings, coords: np.ndarray, labels: np.ndarray, mask_input: Optional[np.ndarray] = None
    ) -> Dict[str, np.ndarray]:
        feeds = {names.IMAGE_EMBEDDINGS: embeddings, names.POINT_COORDS: coords, names.POINT_LABELS: labels}
        inputs = {value.name: value.shape for value in self.sessions[names.PROMPT_DECODER].get_inputs()}
        feeds.update(mask_feeds(inputs, mask_input))
        return self._run(names.PROMPT_DECODER, feeds)


class TensorRTBackend:
    """TensorRT engines with device buffers from cuda-python, allocated once at the
    profile's largest batch and reused; the decoder reads the encoder's output buffer."""

    def __init__(self, directory: Path, manifest: Manifest) -> None:

        trt = import_tensorrt()
        cudart = lazy_import("cuda.bindings.runtime", "pip:cuda-python", "the TensorRT backend")
        self.trt, self.cudart = trt, cudart
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        self.engines, self.contexts, self.buffers = {}, {}, {}
        self.stream = self._check(cudart.cudaStreamCreate())
        for name in names.GRAPHS:
            path = directory / names.engine_file(name)
            if not (path.is_file() or is_listed(manifest, path.name)):
                continue
            engine = runtime.deserialize_cuda_engine(load_checked_engine(directory, manifest, name))
            if engine is None:
                raise NasloraError(f"TensorRT could not load {path}; {rebuild_hint(directory)}")
            if name == names.IMAGE_ENCODER:
                check_image_input(manifest, path, tuple(engine.get_tensor_shape(names.IMAGE)))
            self.engines[name] = engine
            self.contexts[name] = engine.create_execution_context()
            self._allocate(name, engine, self._max_batch(engine))
        if names.IMAGE_ENCODER not in self.engines:
            raise NasloraError(
                f"{directory} has no {names.engine_file(names.IMAGE_ENCODER)}; build the engines on this "
                f"machine: naslora-deploy build-engines {directory}"
            )
        self.max_batch = self._max_batch(self.engines[names.IMAGE_ENCODER])
        self.name = "tensorrt"
        self.on_gpu = True
        self.reuses_embeddings = True  # one device buffer: the next encode overwrites the last embeddings

    @staticmethod
    def _max_batch(engine) -> int:
        """The largest batch of the engine's optimisation profile (first input)."""
        first = engine.get_tensor_name(0)
        return int(engine.get_tensor_profile_shape(first, 0)[2][0])

    def _check(self, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise NasloraError(f"CUDA error {err}")
        return rest[0] if len(rest) == 1 else rest

    def _allocate(self, name: str, engine, max_batch: int) -> None:
        """One device buffer per tensor at its largest shape: inputs at the profile's maximum,
        outputs with the batch axis at ``max_batch`` (the prompt decoder's embeddings are not
        allocated: they are the encoder's output buffer)."""
        trt = self.trt
        for i in range(engine.num_io_tensors):
            tensor = engine.get_tensor_name(i)
            if name != names.IMAGE_ENCODER and tensor == names.IMAGE_EMBEDDINGS:
                continue
            if engine.get_tensor_mode(tensor) == trt.TensorIOMode.INPUT:
                shape = list(engine.get_tensor_profile_shape(tensor, 0)[2])
            else:
                shape = [max_batch if d < 0 else d for d in engine.get_tensor_shape(tensor)]
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(tensor)))
            nbytes = int(np.prod(shape)) * dtype.itemsize
            self.buffers[(name, tensor)] = (self._check(self.cudart.cudaMalloc(nbytes)), dtype, shape)

    def _execute(self, name: str, images: int, host_inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run one engine: ``images`` embeddings in the encoder's buffer, ``host_inputs`` copied in
        (their shapes set the dynamic axes); returns the outputs (the encoder's stay on the GPU)."""
        cudart, context, engine = self.cudart, self.contexts[name], self.engines[name]
        kind = cudart.cudaMemcpyKind
        for i in range(engine.num_io_tensors):
            tensor = engine.get_tensor_name(i)
            shared = tensor == names.IMAGE_EMBEDDINGS and name != names.IMAGE_ENCODER
            pointer = self.buffers[
                (names.IMAGE_ENCODER, names.IMAGE_EMBEDDINGS) if shared else (name, tensor)
            ][0]
            context.set_tensor_address(tensor, int(pointer))
            if engine.get_tensor_mode(tensor) != self.trt.TensorIOMode.INPUT:
                continue
            if tensor in host_inputs:
                array = np.ascontiguousarray(host_inputs[tensor])
                context.set_input_shape(tensor, list(array.shape))
                self._check(
                    cudart.cudaMemcpyAsync(
                        pointer, array.ctypes.data, array.nbytes, kind.cudaMemcpyHostToDevice, self.stream
                    )
                )
            else:
                shape = [images if d < 0 else d for d in engine.get_tensor_shape(tensor)]
                context.set_input_shape(tensor, shape)
        if not context.execute_async_v3(self.stream):
            raise NasloraError(f"TensorRT failed to run {name}")
        outputs = {}
        for i in range(engine.num_io_tensors):
            tensor = engine.get_tensor_name(i)
            if engine.get_tensor_mode(tensor) != self.trt.TensorIOMode.OUTPUT or name == names.IMAGE_ENCODER:
                continue
            pointer, dtype, _ = self.buffers[(name, tensor)]
            array = np.empty(tuple(context.get_tensor_shape(tensor)), dtype=dtype)
            self._check(
                cudart.cudaMemcpyAsync(
                    array.ctypes.data, pointer, array.nbytes, kind.cudaMemcpyDeviceToHost, self.stream
                )
            )
            outputs[tensor] = array
        self._check(cudart.cudaStreamSynchronize(self.stream))
        return outputs

    def encode(self, images: np.ndarray):
        if images.shape[0] > self.max_batch:
            raise NasloraError(
                f"batch {images.shape[0]} exceeds the engine profile's maximum {self.max_batch}"
            )
        self._execute(names.IMAGE_ENCODER, images.shape[0], {names.IMAGE: images.astype(np.float32)})
        return images.shape[0]  # the embeddings stay in the encoder's device buffer

    def decode(self, images: int) -> Dict[str, np.ndarray]:
        return self._execute(names.MASK_DECODER, images, {})

    @property
    def max_prompts(self) -> int:
        """Most prompts per prompt-decoder call (the engine profile's batch)."""
        return self._max_batch(self.engines[names.PROMPT_DECODER])

    def prompt_decode(
        self, images: int, coords: np.ndarray, labels: np.ndarray, mask_input: Optional[np.ndarray] = None
    ) -> Dict[str, np.ndarray]:
        engine = self.engines.get(names.PROMPT_DECODER)
        if engine is None:
            raise NasloraError("these artifacts have no prompt_decoder.engine; export with --prompts")
        most = int(engine.get_tensor_profile_shape(names.POINT_COORDS, 0)[2][1])
        if coords.shape[1] > most:
            raise NasloraError(
                f"{coords.shape[1]} prompt points (a box counts two), but the engine takes at most {most}; "
                "export with a larger --point-slots"
            )
        inputs = {
            names.POINT_COORDS: coords.astype(np.float32),
            names.POINT_LABELS: labels.astype(np.float32),
        }
        tensors = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        # always fed where the engine has them: an input left out would read uninitialised device memory
        inputs.update(mask_feeds({t: tuple(engine.get_tensor_shape(t)) for t in tensors}, mask_input))
        return self._execute(names.PROMPT_DECODER, images, inputs)


def open_backend(
    directory: Path, manifest: Manifest, backend: str = "auto", device: Optional[str] = None
) -> Backend:
    """Open one of the runtime's own backends; ``auto`` takes TensorRT (where engines were
    built and the device is not the CPU), else onnxruntime.

    Where ``auto`` falls back from TensorRT, or a requested ``device="cuda"`` ends on the CPU,
    a ``UserWarning`` says why in one line (the CLI prints it as ``warning: ...``).
    """
    if backend == "tensorrt":
        return TensorRTBackend(directory, manifest)
    if backend == "onnxruntime":
        providers = ["CPUExecutionProvider"] if device == "cpu" else None
        return _warn_if_not_on_gpu(OnnxRuntimeBackend(directory, manifest, providers), device, [])
    if backend != "auto":
        raise NasloraError(
            f"unknown backend {backend!r}; the runtime has {', '.join(RUNTIME_BACKENDS)} "
            "(pass any other backend object to Segmenter, e.g. exporters.torch_backend.TorchBackend)"
        )
    reasons = []
    candidates = ["onnxruntime"]
    if device != "cpu" and (
        (directory / names.engine_file(names.IMAGE_ENCODER)).is_file()
        or is_listed(manifest, names.engine_file(names.IMAGE_ENCODER))
    ):
        candidates.insert(0, "tensorrt")
    for name in candidates:
        try:
            if name == "onnxruntime":  # the last candidate: say why the ones before it were passed over
                providers = ["CPUExecutionProvider"] if device == "cpu" else None
                opened = OnnxRuntimeBackend(directory, manifest, providers)
                return _warn_if_not_on_gpu(opened, device, reasons)
            return open_backend(directory, manifest, name, device)
        except NasloraError as exc:
            reasons.append(f"{name}: {exc}")
    raise NasloraError("no backend could load these artifacts (" + "; ".join(reasons) + ")")


def _warn_if_not_on_gpu(opened, device: Optional[str], reasons: List[str]):
    """``opened``, after a one-line ``UserWarning`` where it is a fallback: from TensorRT (``reasons``
    says why it failed) or from the GPU that ``device="cuda"`` asked for."""
    import warnings

    if reasons:
        warnings.warn(
            f"backend auto fell back to {opened.name}: " + "; ".join(reasons), UserWarning, stacklevel=3
        )
    elif str(device).startswith("cuda") and not opened.on_gpu:
        warnings.warn(
            f"device {device} was asked for, but {opened.name} runs on the CPU: onnxruntime here has no "
            "usable CUDA provider (install onnxruntime-gpu, on a Jetson NVIDIA's wheel for your JetPack)",
            UserWarning,
            stacklevel=3,
        )
    return opened
