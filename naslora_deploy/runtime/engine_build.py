"""TensorRT engines built on the machine that runs them, from an artifact's ONNX files (torch-free).

``naslora-deploy build-engines DIR`` runs ``build_engines``: for every ONNX graph the manifest
lists, polygraphy (``pip install 'naslora-deploy[trt]'``) parses it with the TensorRT present and
builds an engine (fp16 by default, LayerNorm, reductions and softmax pinned to fp32; int8 where
the ONNX carries the export's calibrated Q/DQ scales). ``register_engine`` is the one place an
engine enters an artifact: it writes the engine and its sidecar, then rewrites ``manifest.json``
atomically with the engine's sha256, bytes and build facts (``EngineBuild``), so the runtime's
checks (``runtime.engines.check_engine``) accept it on this TensorRT and GPU and refuse it
anywhere else. ``verify_engines`` runs each engine and its ONNX graph on the same random inputs.
``exporters.tensorrt_engine`` (``export --format trt``) builds through the same functions.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np

from naslora_deploy.common import contract as names
from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.io import atomic_write, atomic_write_text, output_lock, read_json, sha256_of
from naslora_deploy.common.lazy import lazy_import
from naslora_deploy.common.progress import progress as progress_bar
from naslora_deploy.runtime.backends import ort_session
from naslora_deploy.runtime.engines import check_engine, current_gpu, import_tensorrt, sidecar_path
from naslora_deploy.runtime.manifest import (
    Manifest,
    artifact_file,
    is_listed,
    member,
    read_manifest,
    rebuild_hint,
    validate_manifest,
)

# ONNX node names TensorRT keeps as layer names: LayerNorm (and LayerNorm2d's pieces) and softmax.
FP32_LAYER_NAMES = ("LayerNormalization", "ReduceMean", "Pow", "Sqrt", "Softmax")
POLYGRAPHY = "polygraphy"  # imported lazily: the TensorRT build and the engine runner


@dataclass
class EngineBuild:
    """How and where one engine was built: registered in ``manifest.json`` beside its sha256."""

    precision: str
    tensorrt_version: str
    gpu_name: Optional[str]
    compute_capability: Optional[str]
    build_seconds: float
    built_at: str  # UTC, ISO 8601

    def to_dict(self) -> dict:
        """The JSON object merged into the engine's ``files`` entry."""
        return asdict(self)


def _shape_text(shape: List) -> str:
    return "x".join(str(d) for d in shape)


def _profile_dim(dim, index: int, spec) -> int:
    """One axis at profile point ``index`` (0 min, 1 opt, 2 max): named axes are dynamic."""
    if not isinstance(dim, str):
        return int(dim)
    if dim == "points":  # points per prompt: 1 up to the exported slots, tuned for one point + padding
        return (1, min(2, spec.max_points), spec.max_points)[index]
    return (spec.min_batch, spec.opt_batch, spec.max_batch)[index]  # images, prompts: the batch range


def profile_shapes(inputs: List[dict], spec) -> Dict[str, List[List[int]]]:
    """min / opt / max shape per input: batch axes from ``spec``'s batch range, points to ``max_points``.

    ``spec``: an ``exporters.specs.EngineSpec`` (or anything with its fields)."""
    return {
        value["name"]: [[_profile_dim(d, index, spec) for d in value["shape"]] for index in range(3)]
        for value in inputs
    }


def precision_flags(precision: str) -> List[str]:
    """trtexec's precision flags: INT8 (explicit, from the graph's Q/DQ scales) with FP16 for the rest."""
    return ["--int8", "--fp16"] if precision == "int8" else [f"--{precision}"]


def trtexec_command(onnx_path: Path, engine_path: Path, inputs: List[dict], spec) -> str:
    """The equivalent ``trtexec`` command (the manifest's ``"trtexec"`` section)."""
    shapes = profile_shapes(inputs, spec)
    parts = ["trtexec", f"--onnx={onnx_path.name}", f"--saveEngine={engine_path.name}"]
    for flag, index in (("--minShapes", 0), ("--optShapes", 1), ("--maxShapes", 2)):
        parts.append(flag + "=" + ",".join(f"{name}:{_shape_text(s[index])}" for name, s in shapes.items()))
    if spec.precision != "fp32":
        parts += [
            *precision_flags(spec.precision),
            "--layerPrecisions=" + ",".join(f"*{op}*:fp32" for op in FP32_LAYER_NAMES),
            "--precisionConstraints=obey",
        ]
    if spec.workspace_gb:
        parts.append(f"--memPoolSize=workspace:{int(spec.workspace_gb * 1024)}M")
    if spec.timing_cache:
        parts.append(f"--timingCacheFile={spec.timing_cache}")
    return " ".join(shlex.quote(p) for p in parts)


def keep_fp32(network, trt) -> int:
    """Pin normalisation, softmax and reductions to fp32 (fp16 LayerNorm overflows in SAM)."""
    pinned = 0
    # NORMALIZATION from TensorRT 8.6 on; older ones (JetPack 5) split LayerNorm into REDUCE and friends
    kinds = {
        getattr(trt.LayerType, kind)
        for kind in ("NORMALIZATION", "SOFTMAX", "REDUCE")
        if hasattr(trt.LayerType, kind)
    }
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in kinds:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned += 1
    return pinned


def engine_sidecar(
    trt_version: str,
    gpu: Dict[str, Optional[str]],
    spec,
    inputs: List[dict],
    onnx_path: Path,
    engine_path: Path,
) -> dict:
    """What an engine was built with and from: written beside it, never into it."""
    fields = (
        "precision",
        "min_batch",
        "opt_batch",
        "max_batch",
        "workspace_gb",
        "timing_cache",
        "max_points",
    )
    return {
        "tensorrt_version": trt_version,
        "gpu_name": gpu["name"],
        "compute_capability": gpu["compute_capability"],
        "precision": spec.precision,
        "profile": profile_shapes(inputs, spec),
        "inputs": inputs,
        "source_onnx": onnx_path.name,
        "source_onnx_sha256": sha256_of(onnx_path),
        "engine_spec": {name: getattr(spec, name) for name in fields},
        "trtexec": trtexec_command(onnx_path, engine_path, inputs, spec),
    }


def quiet_polygraphy() -> None:
    """polygraphy's log at warnings and errors only: build-engines says one line per step itself."""
    from polygraphy.logger import G_LOGGER

    G_LOGGER.severity = G_LOGGER.WARNING


def serialize_engine(onnx_path: Path, spec, inputs: List[dict]) -> bytes:
    """An engine built by polygraphy from ``onnx_path`` with ``spec``'s precision, profile, workspace
    and timing cache (read and written back when set): its serialized bytes."""
    trt = import_tensorrt()
    polygraphy_trt = lazy_import("polygraphy.backend.trt", "trt", "building TensorRT engines")
    quiet_polygraphy()
    try:
        builder, network, parser = polygraphy_trt.network_from_onnx_path(str(onnx_path))
    except Exception as exc:  # polygraphy raises its own PolygraphyException on a parse failure
        raise NasloraError(f"TensorRT cannot parse {onnx_path} ({str(exc).strip()[:300]})") from None
    lowered = spec.precision != "fp32"
    if lowered:
        keep_fp32(network, trt)
    profile = polygraphy_trt.Profile()
    for name, (low, opt, high) in profile_shapes(inputs, spec).items():
        profile.add(name, low, opt, high)
    cache = Path(spec.timing_cache) if spec.timing_cache else None
    config = polygraphy_trt.CreateConfig(
        fp16=spec.precision in ("fp16", "int8"),
        int8=spec.precision == "int8",  # no calibrator: the scales are the graph's Q/DQ
        bf16=spec.precision == "bf16",
        precision_constraints="obey" if lowered else None,
        profiles=[profile],
        memory_pool_limits=(
            {trt.MemoryPoolType.WORKSPACE: int(spec.workspace_gb * (1 << 30))} if spec.workspace_gb else None
        ),
        load_timing_cache=str(cache) if cache and cache.is_file() else None,
    )
    try:
        serialized = polygraphy_trt.engine_bytes_from_network(
            (builder, network, parser), config, save_timing_cache=str(cache) if cache else None
        )
    except Exception as exc:
        raise NasloraError(
            f"TensorRT could not build an engine from {onnx_path} ({str(exc)[:300]})"
        ) from None
    return bytes(serialized)


def register_engine(
    directory, graph: str, engine_bytes: bytes, build: EngineBuild, sidecar: dict, overwrite: bool = False
) -> dict:
    """Put an engine into an artifact: ``<graph>.engine`` and its sidecar written atomically, then
    ``manifest.json`` rewritten atomically with both files' sha256 and bytes and ``build``'s facts.

    The only way an engine enters an artifact (``build_engines`` and the tests call it). An
    engine already there is replaced only with ``overwrite``. Returns the new manifest's JSON.
    """
    directory = Path(directory)
    manifest_path = directory / names.MANIFEST_NAME
    data = validate_manifest(
        read_json(member(directory, names.MANIFEST_NAME), "artifact manifest"), manifest_path
    )
    engine_name = names.engine_file(graph)
    engine = directory / engine_name
    if not overwrite and (engine.exists() or is_listed(Manifest.from_dict(data, manifest_path), engine_name)):
        raise NasloraError(f"{engine} exists; to replace it, {rebuild_hint(directory)}")
    sidecar_text = json.dumps(sidecar, indent=2) + "\n"
    atomic_write(engine, lambda tmp: tmp.write_bytes(engine_bytes))
    atomic_write_text(sidecar_path(engine), sidecar_text)
    data["files"][engine_name] = {"sha256": sha256_of(engine), "bytes": len(engine_bytes), **build.to_dict()}
    data["precision"] = build.precision  # the engines' precision (verify's tolerances read it)
    data["files"][engine_name + ".json"] = {
        "sha256": sha256_of(sidecar_path(engine)),
        "bytes": len(sidecar_text.encode()),
    }
    validate_manifest(data, manifest_path)
    atomic_write_text(manifest_path, json.dumps(data, indent=2) + "\n")
    return data


def default_precision(manifest: Manifest) -> str:
    """int8 where the ONNX files carry the export's calibrated Q/DQ scales, else fp16."""
    return "int8" if manifest.onnx_precision == "int8" else "fp16"


def check_precision(manifest: Manifest, precision: str, directory) -> None:
    """int8 engines need an int8 export: the calibrated scales are in its graph, not on the device."""
    if precision == "int8" and manifest.onnx_precision != "int8":
        raise NasloraError(
            f"{directory} holds {manifest.onnx_precision} ONNX files, which carry no int8 calibration; "
            "build-engines runs no calibrator: export with --precision int8 --calibration DIR on the "
            "workstation, or build fp16 engines here (--precision fp16)"
        )


def build_one(directory, manifest: Manifest, graph: str, spec, overwrite: bool = False) -> EngineBuild:
    """Build and register the engine of one listed ONNX graph (its ``files`` entry names its inputs)."""
    directory = Path(directory)
    onnx_path = artifact_file(directory, manifest, names.onnx_file(graph))
    entry = manifest.files[names.onnx_file(graph)]
    if sha256_of(onnx_path) != entry["sha256"]:
        raise NasloraError(
            f"{onnx_path} does not match its sha256 in manifest.json; export the artifacts again"
        )
    inputs = entry.get("inputs")
    if not inputs:
        raise NasloraError(f"manifest.json lists no inputs for {onnx_path.name}; export the artifacts again")
    engine = directory / names.engine_file(graph)
    if not overwrite and engine.exists():
        raise NasloraError(f"{engine} exists; to replace it, {rebuild_hint(directory)}")
    trt = import_tensorrt()
    started = time.perf_counter()
    engine_bytes = serialize_engine(onnx_path, spec, inputs)
    gpu = current_gpu()
    build = EngineBuild(
        precision=spec.precision,
        tensorrt_version=trt.__version__,
        gpu_name=gpu["name"],
        compute_capability=gpu["compute_capability"],
        build_seconds=round(time.perf_counter() - started, 2),
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    sidecar = engine_sidecar(trt.__version__, gpu, spec, inputs, onnx_path, engine)
    register_engine(directory, graph, engine_bytes, build, sidecar, overwrite=overwrite)
    return build


def listed_graphs(manifest: Manifest) -> List[str]:
    """The graphs whose ONNX file the manifest lists, in the contract's order."""
    return [graph for graph in names.GRAPHS if is_listed(manifest, names.onnx_file(graph))]


def random_feeds(profile: Dict[str, List[List[int]]], image_size: int, rng) -> Dict[str, np.ndarray]:
    """Inputs at a profile's opt shapes (an engine sidecar's ``profile``): images and embeddings
    normal, points inside the image, labels among SAM's (1, 0, 2 / 3 box corners, -1 padding)."""
    feeds = {}
    for name, (_, opt, _) in profile.items():
        if name == names.POINT_COORDS:
            feeds[name] = rng.uniform(0, image_size, opt).astype(np.float32)
        elif name == names.POINT_LABELS:
            feeds[name] = rng.choice(np.array([-1, 0, 1, 2, 3], np.float32), size=opt)
        else:
            feeds[name] = rng.standard_normal(opt).astype(np.float32)
    return feeds


def verify_engines(directory, graphs: Optional[Iterable[str]] = None, samples: int = 2, seed: int = 0):
    """Max |engine - ONNX| per graph and output on ``samples`` random inputs at each engine's opt
    shapes: the registered engine (checked as the runtime checks it, run by polygraphy's
    ``TrtRunner``) against its ONNX graph (onnxruntime on the CPU). {graph: {output: max abs diff}}."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    trt = import_tensorrt()
    polygraphy_trt = lazy_import("polygraphy.backend.trt", "trt", "comparing engines with ONNX")
    rng = np.random.default_rng(seed)
    results: Dict[str, Dict[str, float]] = {}
    for graph in graphs or listed_graphs(manifest):
        engine_path, sidecar = check_engine(directory, manifest, graph, trt.__version__, current_gpu())
        profile = read_json(sidecar, "engine sidecar")["profile"]
        session = ort_session(
            artifact_file(directory, manifest, names.onnx_file(graph)), "CPUExecutionProvider"
        )
        diffs: Dict[str, float] = {}
        with polygraphy_trt.TrtRunner(polygraphy_trt.engine_from_bytes(engine_path.read_bytes())) as runner:
            for _ in range(samples):
                feeds = random_feeds(profile, manifest.image_size, rng)
                expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
                got = runner.infer(feeds)
                for name, value in expected.items():
                    diff = np.abs(np.asarray(got[name], np.float32) - value.astype(np.float32))
                    diffs[name] = max(diffs.get(name, 0.0), float(diff.max()))
        results[graph] = diffs
    return results


def build_engines(
    directory,
    spec,
    overwrite: bool = False,
    verify: bool = True,
    progress: Optional[bool] = None,
    say: Callable[[str], None] = print,
) -> List[dict]:
    """``naslora-deploy build-engines``: build, register and (``verify``) compare an engine for every
    ONNX graph the artifact lists, one line per step through ``say``. ``spec``: an
    ``exporters.specs.EngineSpec``. The artifact folder is locked while it runs; an engine already
    there is replaced only with ``overwrite`` (checked for all before the first build)."""
    directory = Path(directory)
    with output_lock(directory, "build-engines ARTIFACT"):
        manifest = read_manifest(directory, check_files=False)  # the ONNX files are hashed before use
        check_precision(manifest, spec.precision, directory)
        import_tensorrt()  # before any work: one line on how to get TensorRT
        lazy_import("polygraphy.backend.trt", "trt", "building TensorRT engines")
        graphs = listed_graphs(manifest)
        present = [
            directory / names.engine_file(g) for g in graphs if (directory / names.engine_file(g)).exists()
        ]
        if present and not overwrite:
            raise NasloraError(f"{present[0]} exists; to replace it, {rebuild_hint(directory)}")
        rows = []
        for number, graph in enumerate(progress_bar(graphs, "build-engines", progress), 1):
            say(f"build-engines: {graph} ({number}/{len(graphs)}), {spec.precision}: building...")
            build = build_one(directory, read_manifest(directory, check_files=False), graph, spec, overwrite)
            engine = directory / names.engine_file(graph)
            say(
                f"build-engines: {engine.name} built in {build.build_seconds:.1f} s "
                f"({engine.stat().st_size / 1e6:.1f} MB, TensorRT {build.tensorrt_version}, "
                f"{build.gpu_name} {build.compute_capability}), registered in {names.MANIFEST_NAME}"
            )
            rows.append(
                {"graph": graph, "engine": engine.name, "bytes": engine.stat().st_size, **build.to_dict()}
            )
        if verify:
            say(f"build-engines: comparing {len(rows)} engine(s) with their ONNX graphs (onnxruntime, CPU)")
            diffs = verify_engines(directory, graphs)
            for row in rows:
                row["max_abs_diff"] = diffs[row["graph"]]
                worst = ", ".join(f"{name} {value:.3g}" for name, value in diffs[row["graph"]].items())
                say(f"build-engines: {row['engine']} max |engine - onnx|: {worst}")
    return rows
